"""`sertool baseline --features egemaps|compare`: openSMILE's functionals of the 16 kHz mono signal sertool reads
(against ``Smile.process_signal`` called here on that signal), the ridge on them, the cache (a second run computes
nothing; a new opensmile version misses; an interrupted fill resumes), the scores naming the features, and the
one line a machine without the package gets."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from sertool.baseline.options import BaselineOptions
from sertool.baseline.run import run_baseline
from sertool.cache.audio_keys import audio_digests
from sertool.cache.statistics import AudioStatisticsCache
from sertool.cli.commands import cli
from sertool.core.errors import SertoolError
from sertool.data.audio import load_audio
from sertool.data.corpus import open_corpus
from sertool.inference.predictions import read_predictions
from sertool.models import opensmile_features
from sertool.models.ridge import fit_ridge

EGEMAPS_FUNCTIONALS = 88  # Eyben et al. (2016)
COMPARE_FUNCTIONALS = 6373  # Schuller et al. (2016)


@pytest.fixture
def opensmile():
    """The opensmile package; the test is skipped where it is not installed."""
    return pytest.importorskip("opensmile")


def _reference(opensmile, path) -> np.ndarray:
    """openSMILE's own eGeMAPSv02 functionals of the 16 kHz mono float32 signal sertool reads from ``path``."""
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals)
    return smile.process_signal(load_audio(path).numpy(), 16_000).to_numpy(dtype=np.float64)[0]


def _labels(utterances) -> np.ndarray:
    return np.array([utt.labels() for utt in utterances], dtype=np.float64)


@pytest.fixture
def corpus(tiny_msp, opensmile):
    """tiny_msp with its Test1 clip rewritten at 44.1 kHz in stereo, each channel a different tone: what
    openSMILE must get is sertool's 16 kHz downmix, not the file."""
    test1 = next(utt for utt in open_corpus(str(tiny_msp)).utterances if utt.split == "Test1")
    t = np.arange(44_100 * 2) / 44_100
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 150 * t), 0.2 * np.sin(2 * np.pi * 400 * t)], axis=1)
    sf.write(test1.audio_path, stereo, 44_100, subtype="PCM_16")
    return tiny_msp


@pytest.fixture
def computed(monkeypatch):
    """How many waveforms openSMILE computed functionals of, in this process."""
    calls = []
    original = opensmile_features.OpenSmileExtractor.__call__

    def counting(self, waveform):
        calls.append(len(waveform))
        return original(self, waveform)

    monkeypatch.setattr(opensmile_features.OpenSmileExtractor, "__call__", counting)
    return calls


def _distinct_clips(corpus) -> int:
    """Clips of distinct audio content (tiny_msp's Test3 tone is byte for byte one of its Train clips)."""
    return len(set(audio_digests(open_corpus(str(corpus)).utterances)))


def _baseline(corpus, out, cache, features="egemaps", num_workers=0):
    return run_baseline(BaselineOptions(corpus=str(corpus), out=str(out), features=features, cache_dir=str(cache),
                                        num_workers=num_workers))


def test_egemaps_baseline_is_the_ridge_on_opensmiles_functionals_of_the_signal_sertool_reads(corpus, tmp_path,
                                                                                             opensmile):
    result = _baseline(corpus, tmp_path / "out", tmp_path / "cache", num_workers=2)  # computed in 2 processes
    opened = open_corpus(str(corpus))
    test1 = opened.split("Test1")
    reference = {utt.id: _reference(opensmile, utt.audio_path) for utt in opened.utterances}
    assert reference[test1[0].id].shape == (EGEMAPS_FUNCTIONALS,)
    # The file's own 44.1 kHz stereo is not what the features describe.
    from_file = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                feature_level=opensmile.FeatureLevel.Functionals).process_file(
                                    str(test1[0].audio_path)).to_numpy(dtype=np.float64)[0]
    assert not np.allclose(from_file, reference[test1[0].id])

    setup = opensmile_features.opensmile_setup("egemaps")
    rows = AudioStatisticsCache(setup, tmp_path / "cache").get(opened.utterances)
    np.testing.assert_array_equal(rows, np.stack([reference[utt.id] for utt in opened.utterances]))

    train, valid = opened.split("Train"), opened.split("Development")
    ridge, _ = fit_ridge(np.stack([reference[utt.id] for utt in train]), _labels(train),
                         np.stack([reference[utt.id] for utt in valid]), _labels(valid))
    written = read_predictions(tmp_path / "out" / "Test1.csv")
    np.testing.assert_allclose(written.values, ridge.predict(np.stack([reference[utt.id] for utt in test1])),
                               atol=1e-5)  # the CSV's six decimals
    assert result.system == "ridge baseline (egemaps)"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["system"] == "ridge baseline (egemaps)" and summary["features"] == "egemaps"
    assert summary["num_features"] == EGEMAPS_FUNCTIONALS
    assert summary["feature_setup"] == {"name": "opensmile-eGeMAPSv02", "feature_set": "eGeMAPSv02",
                                        "feature_level": "Functionals", "opensmile": opensmile.__version__}


def test_a_second_run_reads_the_cache_and_a_new_opensmile_version_misses(corpus, tmp_path, monkeypatch, opensmile):
    _baseline(corpus, tmp_path / "first", tmp_path / "cache")

    def fail(self, waveform):
        raise AssertionError("computed although cached")

    with monkeypatch.context() as patched:
        patched.setattr(opensmile_features.OpenSmileExtractor, "__call__", fail)
        _baseline(corpus, tmp_path / "second", tmp_path / "cache")
    for name in ("Development.csv", "Test1.csv", "Test3.csv"):
        assert (tmp_path / "second" / name).read_bytes() == (tmp_path / "first" / name).read_bytes()

    calls = []
    original = opensmile_features.OpenSmileExtractor.__call__
    monkeypatch.setattr(opensmile_features.OpenSmileExtractor, "__call__",
                        lambda self, waveform: calls.append(1) or original(self, waveform))
    monkeypatch.setattr(opensmile, "__version__", "0.0.1")
    _baseline(corpus, tmp_path / "third", tmp_path / "cache")
    assert len(calls) == _distinct_clips(corpus)
    folders = [path.name for path in (tmp_path / "cache" / "utterance-stats").iterdir()]
    assert len(folders) == 2 and all(name.startswith("opensmile-eGeMAPSv02-") for name in folders)


def test_an_interrupted_fill_resumes_where_it_stopped(corpus, tmp_path, monkeypatch, computed):
    monkeypatch.setattr(AudioStatisticsCache, "GROUP_UTTERANCES", 2)
    original = opensmile_features.OpenSmileExtractor.__call__

    def interrupted(self, waveform):
        if len(computed) == 5:
            raise KeyboardInterrupt
        return original(self, waveform)

    with monkeypatch.context() as patched:
        patched.setattr(opensmile_features.OpenSmileExtractor, "__call__", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _baseline(corpus, tmp_path / "out", tmp_path / "cache")
    assert len(computed) == 5  # two groups of two were saved; the fifth clip's group was not
    computed.clear()
    _baseline(corpus, tmp_path / "out", tmp_path / "cache")
    assert len(computed) == _distinct_clips(corpus) - 4


def test_compare_features_constant_over_the_training_clips_give_finite_predictions(corpus, tmp_path):
    """Three training clips of one tone: most of ComParE's 6,373 functionals do not vary over them (and some by
    rounding alone: the ridge's CONSTANT_SCALE, tests/test_baseline.py); none may give a NaN."""
    _baseline(corpus, tmp_path / "out", tmp_path / "cache", features="compare")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["num_features"] == COMPARE_FUNCTIONALS and summary["system"] == "ridge baseline (compare)"
    for name in ("Development.csv", "Test1.csv", "Test3.csv"):
        assert np.isfinite(read_predictions(tmp_path / "out" / name).values).all(), name


def test_a_clip_shorter_than_opensmiles_window_is_padded_with_zeros(opensmile):
    extract = opensmile_features.OpenSmileExtractor("egemaps")
    short = torch.from_numpy(np.random.default_rng(0).normal(scale=0.1, size=300).astype(np.float32))
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals)
    with pytest.warns(UserWarning, match="too short"):  # why it is padded
        assert np.isnan(smile.process_signal(short.numpy(), 16_000).to_numpy()).all()
    padded = np.pad(short.numpy(), (0, opensmile_features.MIN_SAMPLES - 300))
    np.testing.assert_array_equal(extract(short), smile.process_signal(padded, 16_000).to_numpy(dtype=np.float64)[0])
    assert np.isfinite(extract(short)).all()


def test_the_scores_table_names_the_features(corpus, tmp_path):
    result = CliRunner().invoke(cli, ["baseline", "--corpus", str(corpus), "--out", str(tmp_path / "out"),
                                      "--features", "egemaps", "--cache-dir", str(tmp_path / "cache"),
                                      "--num-workers", "0"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("ridge baseline (egemaps)") == 2  # Development and Test1


def test_without_opensmile_the_command_names_the_package_to_install(tiny_msp, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "opensmile", None)  # import opensmile raises ImportError
    with pytest.raises(SertoolError):
        opensmile_features.require_opensmile("compare")
    result = CliRunner().invoke(cli, ["baseline", "--corpus", str(tiny_msp), "--out", str(tmp_path / "out"),
                                      "--features", "egemaps", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: --features egemaps needs opensmile, which is not installed: pip install "
                               "'opensmile"), lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()  # before any work


def test_a_feature_set_sertool_does_not_know_is_one_line_from_the_api_too(tiny_msp, tmp_path):
    with pytest.raises(SertoolError, match=r"--features 'smile': not a feature set; choose one of logmel, egemaps"):
        run_baseline(BaselineOptions(corpus=str(tiny_msp), out=str(tmp_path / "out"), features="smile"))
