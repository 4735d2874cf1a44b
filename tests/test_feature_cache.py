"""The frozen-Whisper feature cache (--feature-cache): cached epochs train the model recomputed epochs train,
crops are cut from whole-file frames, an interrupted fill resumes, a changed file misses, and runs the cache
cannot serve say so and recompute."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sertool.cache import frames as frame_cache_module
from sertool.cache.frames import CachedFrames, FrameCache
from sertool.core.config import Config, ModelConfig
from sertool.core.errors import SertoolError
from sertool.data.corpus import open_corpus
from sertool.data.dataset import UtteranceDataset, crop_frames, load_utterance_audio
from sertool.models.backbones.whisper import FRAME_RATE
from sertool.models.frame_features import frame_cache, frame_cache_refusal
from sertool.models.ser_model import SERModel
from sertool.runtime.frames import fill_frame_cache
from sertool.runtime.runner import run_model
from sertool.store.checkpoints import load_stored_state
from sertool.store.model_folder import load_model
from sertool.training.loop import train
from sertool.training.reporter import Reporter
from tests.corpus_files import write_learnable_corpus
from tests.systems import small_config
from tests.tiny_speech import save_tiny_whisper

# float16 keeps 11 significant bits: a stored value is within 2^-11 of the computed one, relative to it.
FLOAT16_RELATIVE = 2.0 ** -11
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_learnable_corpus(tmp_path_factory.mktemp("corpus") / "c", per_split={"Train": 8, "Development": 4})


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory) -> Path:
    return save_tiny_whisper(tmp_path_factory.mktemp("whisper") / "w")


def whisper_config(corpus: Path, whisper_dir: Path, feature_cache: Path | None, **model_overrides) -> Config:
    config = small_config(corpus, epochs=2)
    config.model.backbone = "whisper"
    config.model.backbone_path = str(whisper_dir)
    config.model.layer_weighting = "last"
    for key, value in model_overrides.items():
        setattr(config.model, key, value)
    config.data.feature_cache = str(feature_cache) if feature_cache is not None else None
    return config


def train_records(run_dir: Path, kind: str) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [record for record in records if record["type"] == kind]


class Messages(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def tiny_model(whisper_dir: Path, **overrides) -> SERModel:
    return SERModel(ModelConfig(**{"backbone": "whisper", "backbone_path": str(whisper_dir), "layer_weighting": "last",
                                   "head_hidden_dim": 8, **overrides}))


def utterances(corpus: Path):
    return open_corpus(corpus).utterances


def alone(model: SERModel, utt) -> np.ndarray:
    """The backbone's frames of one utterance, computed alone at its real length."""
    waveform = load_utterance_audio(utt)[None]
    with torch.no_grad():
        frames, mask = model.backbone(waveform, torch.ones_like(waveform, dtype=torch.bool))
    return frames[0, : int(mask.sum())].numpy()


def test_a_cached_epoch_trains_the_model_a_recomputed_epoch_trains(corpus, whisper_dir, tmp_path):
    recomputed = train(whisper_config(corpus, whisper_dir, None), tmp_path / "recomputed")
    messages = Messages()
    cached = train(whisper_config(corpus, whisper_dir, tmp_path / "features"), tmp_path / "cached", reporter=messages)
    assert any("12 utterances" in line for line in messages.lines)  # 8 Train + 4 Development computed
    # Whole clips (no crop): the model sees the encoder's frames rounded to float16, so each loss moves by
    # about that rounding (2^-11 relative), far less than the 1e-3 allowed.
    for kind, key in (("train", "loss_total"), ("valid", "ccc_average")):
        ours = [record[key] for record in train_records(tmp_path / "cached", kind)]
        theirs = [record[key] for record in train_records(tmp_path / "recomputed", kind)]
        assert len(ours) == len(theirs) == 2
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4)
    assert cached.best_step == recomputed.best_step
    # The checkpoint is the same kind of model: the same state keys, and on raw audio (no cache) it predicts
    # what its validation recorded.
    best = load_model(str(tmp_path / "cached"))
    assert best["model_state"].keys() == load_model(str(tmp_path / "recomputed"))["model_state"].keys()
    model = SERModel(Config.from_dict(best["config"]).model, num_speakers=0)
    load_stored_state(model, best["model_state"], source="best.pt")
    valid = [utt for utt in utterances(corpus) if utt.split == "Development"]
    raw = run_model(model, valid, device=CPU).emotion_unit
    cache = frame_cache(model, tmp_path / "features", amp_dtype=None)
    from_cache = run_model(model, valid, device=CPU, frames=fill_frame_cache(
        model.backbone, valid, cache, frame_rate=FRAME_RATE, device=CPU)).emotion_unit
    assert cache.misses == 0  # the training run filled them, and the checkpoint's encoder has the same key
    np.testing.assert_allclose(from_cache, raw, rtol=0, atol=1e-3)


def test_cached_frames_are_the_encoders_frames_of_the_whole_file(corpus, whisper_dir, tmp_path):
    model = tiny_model(whisper_dir)
    utts = utterances(corpus)
    cached = fill_frame_cache(model.backbone, utts, frame_cache(model, tmp_path, amp_dtype=None),
                              frame_rate=FRAME_RATE, device=CPU, max_batch_s=4.0)  # several padded batches
    for utt in utts:
        expected = alone(model, utt)
        stored = cached.by_id[utt.id].read()
        assert stored.dtype == np.float16 and stored.shape == expected.shape
        np.testing.assert_allclose(stored.astype(np.float32), expected, rtol=FLOAT16_RELATIVE, atol=1e-6)


def test_a_crop_is_the_slice_of_the_whole_files_frames(corpus, whisper_dir, tmp_path):
    model = tiny_model(whisper_dir)
    utts = [utt for utt in utterances(corpus) if utt.duration_s > 1.0]
    cached = fill_frame_cache(model.backbone, utts, frame_cache(model, tmp_path, amp_dtype=None),
                              frame_rate=FRAME_RATE, device=CPU)
    crop_s = 0.5
    dataset = UtteranceDataset(utts, to_unit=float, max_duration_s=crop_s, frames=cached, seed=3)
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        for index, utt in enumerate(utts):
            offset_s = dataset._crop_offset_s(index)
            start = round(offset_s * FRAME_RATE)
            whole = cached.by_id[utt.id].read()
            item = dataset[index]
            np.testing.assert_array_equal(item["frames"].numpy(), whole[start:start + 25])  # 0.5 s = 25 frames
            assert "waveform" not in item  # nothing else reads the audio
            # As many frames as the encoder makes of the cropped audio (their values differ: there every
            # frame saw only the crop, here the whole file).
            recomputed = load_utterance_audio(utt, crop=(offset_s, crop_s))[None]
            with torch.no_grad():
                _, mask = model.backbone(recomputed, torch.ones_like(recomputed, dtype=torch.bool))
            assert int(mask.sum()) == len(item["frames"])


def test_a_crop_near_the_end_stays_inside_the_file():
    frames = frame_cache_module.ArrayFrames(np.arange(10, dtype=np.float16)[:, None])
    np.testing.assert_array_equal(crop_frames(frames, (0.19, 0.1), frame_rate=50.0)[:, 0], [5, 6, 7, 8, 9])
    np.testing.assert_array_equal(crop_frames(frames, (0.0, 1.0), frame_rate=50.0)[:, 0], np.arange(10))


def test_an_interrupted_fill_resumes_where_it_stopped(corpus, whisper_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(frame_cache_module, "GROUP_UTTERANCES", 2)
    model = tiny_model(whisper_dir)
    utts = utterances(corpus)
    computed: list[str] = []

    def compute(batch, *, fail_after: int | None = None):
        if fail_after is not None and len(computed) >= fail_after:
            raise KeyboardInterrupt  # killed while computing the third shard
        computed.extend(utt.id for utt in batch)
        return [alone(model, utt) for utt in batch]

    cache = FrameCache(tmp_path, "tiny", dim=model.backbone.output_dim)
    with pytest.raises(KeyboardInterrupt):
        cache.get(utts, lambda batch: compute(batch, fail_after=4))
    assert len(list(cache.folder.glob("*.npy"))) == 2
    # A shard a killed process was writing: a temporary name, never read as an entry.
    complete = next(cache.folder.glob("*.npy")).read_bytes()
    (cache.folder / ".partial.npy.x1y2.tmp").write_bytes(complete[: len(complete) // 2])
    first = list(computed)
    computed.clear()
    again = FrameCache(tmp_path, "tiny", dim=model.backbone.output_dim)
    frames = again.get(utts, compute)
    assert sorted(computed) == sorted(utt.id for utt in utts if utt.id not in first)  # the first 4 were reused
    assert (again.hits, again.misses) == (4, len(utts) - 4)
    for utt, entry in zip(utts, frames, strict=True):
        np.testing.assert_allclose(entry.read().astype(np.float32), alone(model, utt), rtol=FLOAT16_RELATIVE, atol=1e-6)


def test_a_changed_file_is_computed_again_and_the_others_hit(corpus, whisper_dir, tmp_path):
    model = tiny_model(whisper_dir)
    utts = utterances(write_learnable_corpus(tmp_path / "c", per_split={"Train": 4, "Development": 2}))
    first = frame_cache(model, tmp_path / "features", amp_dtype=None)
    fill_frame_cache(model.backbone, utts, first, frame_rate=FRAME_RATE, device=CPU)
    changed = utts[2]
    samples, rate = sf.read(changed.audio_path)
    sf.write(changed.audio_path, samples[::-1].copy(), rate, subtype="PCM_16")  # same length, other samples
    second = frame_cache(model, tmp_path / "features", amp_dtype=None)
    cached = fill_frame_cache(model.backbone, utts, second, frame_rate=FRAME_RATE, device=CPU)
    assert second.misses == 1  # counted in its first pass; the second pass reads everything
    np.testing.assert_allclose(cached.by_id[changed.id].read().astype(np.float32), alone(model, changed),
                               rtol=FLOAT16_RELATIVE, atol=1e-6)
    # Another encoder (other weights) never reads these frames.
    other = SERModel(ModelConfig(backbone="whisper", backbone_path=str(save_tiny_whisper(tmp_path / "w2", seed=1)),
                                 layer_weighting="last", head_hidden_dim=8))
    assert frame_cache(other, tmp_path / "features", amp_dtype=None).folder != second.folder


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"backbone": "fbank", "backbone_path": None, "layer_weighting": "weighted"}, "--backbone fbank"),
    ({"lora_rank": 2}, "LoRA"),
    ({"layer_weighting": "weighted"}, "--layer-weighting weighted"),
    ({"freeze_backbone": False}, "fine-tuned"),
])
def test_a_run_the_cache_cannot_serve_says_so_in_one_line_and_recomputes(corpus, whisper_dir, tmp_path, overrides,
                                                                        expected):
    config = whisper_config(corpus, whisper_dir, tmp_path / "features", **overrides)
    config.train.epochs = 1
    messages = Messages()
    result = train(config, tmp_path / "run", reporter=messages)
    notes = [line for line in messages.lines if line.startswith("--feature-cache")]
    assert len(notes) == 1 and expected in notes[0] and "\n" not in notes[0]
    assert result.steps > 0 and not (tmp_path / "features").exists()


def test_speed_perturbation_is_not_cached():
    config = Config()
    config.model.backbone, config.model.layer_weighting = "whisper", "last"
    assert frame_cache_refusal(config) is None
    config.data.speed_perturbation = 0.1
    assert "--speed-perturbation" in (frame_cache_refusal(config) or "")


def test_precomputed_frames_are_refused_by_a_backbone_that_trains(whisper_dir):
    model = tiny_model(whisper_dir, layer_weighting="weighted")
    frames = torch.zeros(1, 5, model.backbone.output_dim)
    with pytest.raises(ValueError, match="weights its layers"):
        model(torch.zeros(1, 0), torch.zeros(1, 0, dtype=torch.bool), frames=frames,
              frame_mask=torch.ones(1, 5, dtype=torch.bool))


def test_a_cache_that_cannot_be_written_is_an_error_that_keeps_what_was_written(whisper_dir, tmp_path, corpus):
    model = tiny_model(whisper_dir)
    (tmp_path / "file").write_text("not a folder")
    cache = FrameCache(tmp_path / "file", "tiny", dim=model.backbone.output_dim)
    with pytest.raises(SertoolError, match="next run goes on from there"):
        cache.get(utterances(corpus)[:1], lambda batch: [alone(model, utt) for utt in batch])


def test_resume_cannot_switch_the_cache_on(corpus, tmp_path):
    config = small_config(corpus, epochs=1)
    train(config, tmp_path / "run")
    with pytest.raises(SertoolError, match="trained without one"):
        train(config, tmp_path / "run", resume=True, relocated={"data.feature_cache": str(tmp_path / "features")})


def test_cached_frames_go_with_the_audio_for_a_model_that_reads_it(corpus, whisper_dir, tmp_path):
    model = tiny_model(whisper_dir, speaker_embedding="log-mel-stats")
    assert model.reads_audio_beside_frames
    utts = utterances(corpus)[:2]
    cached = fill_frame_cache(model.backbone, utts, frame_cache(model, tmp_path, amp_dtype=None), frame_rate=FRAME_RATE,
                              device=CPU, read_waveforms=model.reads_audio_beside_frames)
    assert isinstance(cached, CachedFrames) and cached.read_waveforms
    np.testing.assert_allclose(run_model(model, utts, device=CPU, frames=cached).emotion_unit,
                               run_model(model, utts, device=CPU).emotion_unit, rtol=0, atol=1e-3)


def test_a_floor_blend_run_validates_from_the_cache_as_from_the_audio(corpus, whisper_dir, tmp_path):
    """--floor-blend reads the audio beside the cached frames: its floor, and so every blend, are the same."""
    recomputed = train(whisper_config(corpus, whisper_dir, None, floor_blend=True), tmp_path / "recomputed")
    cached = train(whisper_config(corpus, whisper_dir, tmp_path / "features", floor_blend=True), tmp_path / "cached")
    assert [record["step"] for record in cached.history] == [0, 2, 4]  # step 0: the floor's validation
    for ours, theirs in zip(cached.history, recomputed.history, strict=True):
        assert ours["ccc_average"] == pytest.approx(theirs["ccc_average"], abs=1e-3)
    assert all("floor_blend" in record for record in cached.history)
