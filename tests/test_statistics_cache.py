"""The utterance-statistics cache (``StatisticsCache``): every value equals the statistics computed from the
clip alone (``StatisticsExtractor``, the reference); a second pass computes nothing; a rewritten file is
computed again; windows of one file are keyed apart; worker processes give the same rows; a training run
and `sertool baseline` reuse what the other computed."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from sertool.baseline.options import BaselineOptions
from sertool.baseline.run import run_baseline
from sertool.cache import statistics
from sertool.core.errors import SertoolError
from sertool.data.corpus import open_corpus
from sertool.data.dataset import load_utterance_audio
from sertool.models.utterance_stats import NUM_FEATURES, StatisticsExtractor, utterance_statistics
from sertool.store.checkpoints import load_checkpoint
from sertool.training.loop import train
from tests.corpus_files import write_learnable_corpus
from tests.systems import small_config


@pytest.fixture
def corpus(tmp_path):
    return write_learnable_corpus(tmp_path / "corpus", per_split={"Train": 8, "Development": 4, "Test1": 4})


@pytest.fixture
def computed(monkeypatch):
    """The utterances whose statistics are computed (not read from the cache), in this process."""
    ids: list[str] = []
    original = statistics._StatisticsDataset.__getitem__

    def counting(self, index):
        ids.append(self.utterances[index].id)
        return original(self, index)

    monkeypatch.setattr(statistics._StatisticsDataset, "__getitem__", counting)
    return ids


def _reference(utterances) -> np.ndarray:
    extract = StatisticsExtractor()
    return np.stack([extract(load_utterance_audio(utt)) for utt in utterances])


def test_cached_statistics_equal_the_clips_own_and_a_second_pass_computes_none(corpus, tmp_path, computed):
    utterances = open_corpus(str(corpus)).utterances
    first = utterance_statistics(utterances, cache_dir=tmp_path / "cache")
    assert first.shape == (len(utterances), NUM_FEATURES) and first.dtype == np.float64
    np.testing.assert_array_equal(first, _reference(utterances))
    assert sorted(computed) == sorted(utt.id for utt in utterances)
    computed.clear()
    again = utterance_statistics(utterances[::-1], cache_dir=tmp_path / "cache")
    assert computed == []
    np.testing.assert_array_equal(again, first[::-1])


def test_a_rewritten_file_is_computed_again_and_the_others_are_not(corpus, tmp_path, computed):
    utterances = open_corpus(str(corpus)).utterances
    before = utterance_statistics(utterances, cache_dir=tmp_path / "cache")
    changed = utterances[3]
    wave, sample_rate = sf.read(changed.audio_path)
    sf.write(changed.audio_path, wave * 0.25, sample_rate, subtype="PCM_16")  # same length: same size on disk
    stat = os.stat(changed.audio_path)
    os.utime(changed.audio_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    computed.clear()
    after = utterance_statistics(utterances, cache_dir=tmp_path / "cache")
    assert computed == [changed.id]
    np.testing.assert_array_equal(after[3], _reference([changed])[0])
    assert not np.array_equal(after[3], before[3])
    np.testing.assert_array_equal(np.delete(after, 3, axis=0), np.delete(before, 3, axis=0))


def test_windows_of_one_file_are_keyed_apart(corpus, tmp_path):
    whole = open_corpus(str(corpus)).utterances[0]
    windows = [whole.window(0.0, 0.3, id="a"), whole.window(0.3, 0.6, id="b"), whole]
    rows = utterance_statistics(windows, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(rows, _reference(windows))
    assert len({row.tobytes() for row in rows}) == 3


def test_worker_processes_give_the_same_rows_and_name_an_unreadable_file(corpus, tmp_path):
    utterances = open_corpus(str(corpus)).utterances
    in_workers = utterance_statistics(utterances, cache_dir=tmp_path / "workers", num_workers=2)
    np.testing.assert_array_equal(in_workers, _reference(utterances))
    broken = utterances[5]
    shutil.copyfile(broken.audio_path, tmp_path / "kept.wav")
    broken.audio_path.write_bytes(b"RIFF not a wave file at all")
    with pytest.raises(SertoolError, match=broken.audio_path.name) as raised:
        utterance_statistics(utterances, cache_dir=tmp_path / "other", num_workers=2)
    assert "Traceback" not in str(raised.value)


def test_training_reuses_the_baselines_statistics_and_trains_the_same(corpus, tmp_path, computed):
    config = small_config(corpus, epochs=1)
    config.model.floor_blend = True
    config.data.cache_dir = str(tmp_path / "cache")
    cold = train(config, tmp_path / "cold")
    assert len(computed) == 12  # Train and Development, once
    computed.clear()
    run_baseline(BaselineOptions(corpus=str(corpus), out=tmp_path / "baseline", cache_dir=tmp_path / "cache",
                                 num_workers=0))
    assert sorted(computed) == sorted(utt.id for utt in open_corpus(str(corpus)).split("Test1"))
    computed.clear()
    warm = train(config, tmp_path / "warm")
    assert computed == []
    assert warm.steps == cold.steps
    a = load_checkpoint(tmp_path / "cold", name="last.pt")["model_state"]
    b = load_checkpoint(tmp_path / "warm", name="last.pt")["model_state"]
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
