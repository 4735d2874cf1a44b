"""The feature cache (--feature-cache) of frozen encoders (Whisper, WavLM, HuBERT, wav2vec2), their last layer or
every layer the weighted sum mixes: cached epochs train the model recomputed epochs train, a cached step has the
loss of a step through the encoder, crops are cut from whole-file frames, an interrupted fill resumes, the key
follows the encoder's weights and layers, a changed file misses, and runs the cache cannot serve say so and
recompute."""
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
from sertool.data.dataset import UtteranceDataset, collate, crop_frames, load_utterance_audio
from sertool.models.frame_features import frame_cache, frame_cache_refusal
from sertool.models.losses import SERLoss
from sertool.models.ser_model import SERModel
from sertool.runtime.frames import fill_frame_cache
from sertool.runtime.runner import run_model
from sertool.store.checkpoints import load_stored_state
from sertool.store.model_folder import load_model
from sertool.training.loop import train
from sertool.training.reporter import Reporter
from tests.corpus_files import write_learnable_corpus
from tests.systems import small_config
from tests.tiny_speech import save_tiny_hubert, save_tiny_wav2vec2, save_tiny_wavlm, save_tiny_whisper

# float16 keeps 11 significant bits: a stored value is within 2^-11 of the computed one, relative to it.
FLOAT16_RELATIVE = 2.0 ** -11
# A padded batch equals one utterance alone to float32 rounding, not bit for bit: states near zero differ by that.
BATCH_ATOL = 1e-5
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_learnable_corpus(tmp_path_factory.mktemp("corpus") / "c", per_split={"Train": 8, "Development": 4})


SAVERS = {"whisper": save_tiny_whisper, "wavlm": save_tiny_wavlm, "hubert": save_tiny_hubert,
          "wav2vec2": save_tiny_wav2vec2}


@pytest.fixture(scope="module")
def speech_dirs(tmp_path_factory) -> dict[str, Path]:
    """A tiny random model folder per pretrained backbone."""
    root = tmp_path_factory.mktemp("speech")
    return {name: save(root / name) for name, save in SAVERS.items()}


@pytest.fixture(scope="module")
def whisper_dir(speech_dirs) -> Path:
    return speech_dirs["whisper"]


def backbone_config(corpus: Path, model_dir: Path | None, feature_cache: Path | None, *, backbone: str = "whisper",
                    **model_overrides) -> Config:
    """``small_config`` on ``backbone`` (Whisper's last layer unless overridden; a wav2vec2-family encoder
    frozen, its layers weighted), caching in ``feature_cache``."""
    config = small_config(corpus, epochs=2)
    config.model.backbone = backbone
    config.model.backbone_path = str(model_dir) if model_dir is not None else None
    config.model.layer_weighting = "last" if backbone == "whisper" else "weighted"
    config.model.freeze_backbone = True if backbone in ("wavlm", "hubert", "wav2vec2") else None
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


def frozen_model(speech_dirs: dict[str, Path], backbone: str, **overrides) -> SERModel:
    """A frozen tiny ``backbone`` with weighted layers, whose layer weights are not uniform (a sum that mixed
    the states in another order, or one state for another, would differ)."""
    model = SERModel(ModelConfig(**{"backbone": backbone, "backbone_path": str(speech_dirs[backbone]),
                                    "layer_weighting": "weighted", "freeze_backbone": True, "head_hidden_dim": 8,
                                    "head_dropout": 0.0, **overrides}))
    layer_weights = model.backbone.layer_weights
    if layer_weights is not None:
        with torch.no_grad():
            layer_weights.logits.copy_(torch.linspace(-1.0, 1.5, layer_weights.logits.numel()))
    return model


def utterances(corpus: Path):
    return open_corpus(corpus).utterances


def alone(model: SERModel, utt) -> np.ndarray:
    """The backbone's states of one utterance (``[T, L × D]``), computed alone at its real length."""
    waveform = load_utterance_audio(utt)[None]
    with torch.no_grad():
        states, mask = model.backbone.layer_states(waveform, torch.ones_like(waveform, dtype=torch.bool))
    return states[0, : int(mask.sum())].flatten(1).numpy()


def _assert_same_training(cached: Path, recomputed: Path) -> None:
    """The two runs' logged training losses and validation CCCs agree within float16 rounding of the frames."""
    for kind, key in (("train", "loss_total"), ("valid", "ccc_average")):
        ours = [record[key] for record in train_records(cached, kind)]
        theirs = [record[key] for record in train_records(recomputed, kind)]
        assert len(ours) == len(theirs) == 2
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4)


def test_a_cached_epoch_trains_the_model_a_recomputed_epoch_trains(corpus, whisper_dir, tmp_path):
    recomputed = train(backbone_config(corpus, whisper_dir, None), tmp_path / "recomputed")
    messages = Messages()
    cached = train(backbone_config(corpus, whisper_dir, tmp_path / "features"), tmp_path / "cached", reporter=messages)
    assert any("12 utterances" in line for line in messages.lines)  # 8 Train + 4 Development computed
    # Whole clips (no crop): the model sees the encoder's frames rounded to float16, so each loss moves by
    # about that rounding (2^-11 relative), far less than the 1e-3 allowed.
    _assert_same_training(tmp_path / "cached", tmp_path / "recomputed")
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
        model.backbone, valid, cache, device=CPU)).emotion_unit
    assert cache.misses == 0  # the training run filled them, and the checkpoint's encoder has the same key
    np.testing.assert_allclose(from_cache, raw, rtol=0, atol=1e-3)


def test_cached_frames_are_the_encoders_frames_of_the_whole_file(corpus, whisper_dir, tmp_path):
    model = tiny_model(whisper_dir)
    utts = utterances(corpus)
    cached = fill_frame_cache(model.backbone, utts, frame_cache(model, tmp_path, amp_dtype=None),
                              device=CPU, max_batch_s=4.0)  # several padded batches
    for utt in utts:
        expected = alone(model, utt)
        stored = cached.by_id[utt.id].read()
        assert stored.dtype == np.float16 and stored.shape == expected.shape
        np.testing.assert_allclose(stored.astype(np.float32), expected, rtol=FLOAT16_RELATIVE, atol=1e-6)


# 0.5 s = 8000 samples: Whisper, 50 mel frame pairs → 25 frames; the wav2vec2 family's CNN, (8000 - 400) // 320 + 1.
@pytest.mark.parametrize(("backbone", "crop_frame_count"), [("whisper", 25), ("wavlm", 24)])
def test_a_crop_is_the_slice_of_the_whole_files_frames(corpus, speech_dirs, tmp_path, backbone, crop_frame_count):
    model = tiny_model(speech_dirs[backbone]) if backbone == "whisper" else frozen_model(speech_dirs, backbone)
    frame_rate = model.backbone.frame_rate
    utts = [utt for utt in utterances(corpus) if utt.duration_s > 1.0][:4]
    crop_s = 0.5
    cached = fill_frame_cache(model.backbone, utts, frame_cache(model, tmp_path, amp_dtype=None), device=CPU,
                              crop_s=crop_s)
    assert cached.crop_frames == crop_frame_count
    dataset = UtteranceDataset(utts, to_unit=float, max_duration_s=crop_s, frames=cached, seed=3)
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        for index, utt in enumerate(utts):
            offset_s = dataset._crop_offset_s(index)
            start = round(offset_s * frame_rate)
            whole = cached.by_id[utt.id].read()
            item = dataset[index]
            np.testing.assert_array_equal(item["frames"].numpy(), whole[start:start + crop_frame_count])
            assert "waveform" not in item  # nothing else reads the audio
            # As many frames as the encoder makes of the cropped audio (their values differ: there every
            # frame saw only the crop, here the whole file).
            recomputed = load_utterance_audio(utt, crop=(offset_s, crop_s))[None]
            with torch.no_grad():
                _, mask = model.backbone(recomputed, torch.ones_like(recomputed, dtype=torch.bool))
            assert int(mask.sum()) == len(item["frames"])


def one_batch(model: SERModel, utts, frames: CachedFrames | None):
    """Every utterance of ``utts`` in one padded training batch (whole clips), from the audio or the cache."""
    dataset = UtteranceDataset(utts, to_unit=model.label_scaling.to_unit, frames=frames)
    return collate([dataset[index] for index in range(len(utts))])


def step_loss(model: SERModel, batch) -> tuple[float, torch.Tensor]:
    """A training step's loss on ``batch`` and the gradient it gives the layer weights."""
    model.train()
    model.zero_grad()
    output = model(batch.waveforms, batch.sample_mask, frames=batch.frames, frame_mask=batch.frame_mask)
    loss, _ = SERLoss(model.config)(output, batch.targets, gender_ids=batch.gender_ids)
    loss.backward()
    layer_weights = model.backbone.layer_weights
    assert layer_weights is not None and layer_weights.logits.grad is not None
    return float(loss.detach()), layer_weights.logits.grad.clone()


@pytest.mark.parametrize("backbone", ["wavlm", "hubert", "wav2vec2", "whisper"])
def test_a_cached_step_has_the_loss_of_a_step_through_the_encoder(corpus, speech_dirs, tmp_path, backbone):
    model = frozen_model(speech_dirs, backbone, aux=("gender",))
    utts = [utt for utt in utterances(corpus) if utt.split == "Train"]
    cache = frame_cache(model, tmp_path, amp_dtype=None)
    cached = fill_frame_cache(model.backbone, utts, cache, device=CPU)
    states = model.backbone.num_layer_states
    assert states == 3  # the embeddings and both layers of the tiny encoder, side by side in each row
    assert cached.by_id[utts[0].id].read().shape[1] == states * model.backbone.output_dim == cache.dim
    from_cache = one_batch(model, utts, cached)
    assert from_cache.frames is not None and from_cache.frames.dtype == torch.float16
    assert from_cache.waveforms.numel() == 0  # the step reads no audio
    cached_loss, cached_gradient = step_loss(model, from_cache)
    recomputed_loss, recomputed_gradient = step_loss(model, one_batch(model, utts, None))
    # The states reach the layer weights rounded to float16 (2^-11 relative): the loss and the layer weights'
    # gradient move by about that much.
    assert cached_loss == pytest.approx(recomputed_loss, rel=1e-3)
    np.testing.assert_allclose(cached_gradient.numpy(), recomputed_gradient.numpy(), rtol=2e-2,
                               atol=2e-3 * float(recomputed_gradient.abs().max()))
    assert [p for p in model.parameters() if p.requires_grad and p.grad is None] == []  # all train on the cache


def test_a_frozen_wavlm_run_trains_on_cached_layers_as_on_recomputed_ones(corpus, speech_dirs, tmp_path):
    def config(feature_cache: Path | None) -> Config:
        return backbone_config(corpus, speech_dirs["wavlm"], feature_cache, backbone="wavlm", head_dropout=0.0)

    recomputed = train(config(None), tmp_path / "recomputed")
    messages = Messages()
    cached = train(config(tmp_path / "features"), tmp_path / "cached", reporter=messages)
    notes = [line for line in messages.lines if line.startswith("feature cache")]
    assert len(notes) == 1 and "0 of 12 utterances" in notes[0] and "3 hidden states a frame" in notes[0]
    _assert_same_training(tmp_path / "cached", tmp_path / "recomputed")
    assert cached.best_step == recomputed.best_step
    # The layer weights trained on the cache are stored, and the model is the same kind as a recomputed run's.
    best = load_model(str(tmp_path / "cached"))
    assert "backbone.layer_weights.logits" in best["model_state"]
    assert best["model_state"].keys() == load_model(str(tmp_path / "recomputed"))["model_state"].keys()


def test_an_interrupted_fill_of_every_layer_resumes(corpus, speech_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr(frame_cache_module, "GROUP_UTTERANCES", 2)
    model = frozen_model(speech_dirs, "hubert")
    backbone = model.backbone
    utts = utterances(corpus)
    computed: list[int] = []
    real_states = backbone.layer_states

    def layer_states(waveforms, sample_mask, *, fail_after: int | None = None):
        if fail_after is not None and sum(computed) >= fail_after:
            raise KeyboardInterrupt  # killed while computing the third shard
        computed.append(len(waveforms))
        return real_states(waveforms, sample_mask)

    monkeypatch.setattr(backbone, "layer_states", lambda *args: layer_states(*args, fail_after=4))
    with pytest.raises(KeyboardInterrupt):
        fill_frame_cache(backbone, utts, frame_cache(model, tmp_path, amp_dtype=None), device=CPU)
    cache = frame_cache(model, tmp_path, amp_dtype=None)
    assert len(list(cache.folder.glob("*.npy"))) == 2 and sum(computed) == 4
    computed.clear()
    monkeypatch.setattr(backbone, "layer_states", layer_states)
    cached = fill_frame_cache(backbone, utts, cache, device=CPU)
    assert sum(computed) == len(utts) - 4 and (cache.hits, cache.misses) == (4, len(utts) - 4)
    for utt in utts:
        np.testing.assert_allclose(cached.by_id[utt.id].read().astype(np.float32), alone(model, utt),
                                   rtol=FLOAT16_RELATIVE, atol=BATCH_ATOL)


def test_the_key_follows_the_encoders_weights_and_layers_not_the_layer_weights(speech_dirs, tmp_path):
    model = frozen_model(speech_dirs, "wavlm")
    folder = frame_cache(model, tmp_path, amp_dtype=None).folder
    with torch.no_grad():  # what training changes: the layer weights read the cache, they do not make it
        model.backbone.layer_weights.logits.add_(1.0)
    assert frame_cache(model, tmp_path, amp_dtype=None).folder == folder
    assert frame_cache(frozen_model(speech_dirs, "wavlm"), tmp_path, amp_dtype=None).folder == folder
    # Another encoder: other weights (another seed, or one weight changed), other layers, another family.
    other_seed = frozen_model({"wavlm": save_tiny_wavlm(tmp_path / "seed1", seed=1)}, "wavlm")
    last_layer = frozen_model(speech_dirs, "wavlm", layer_weighting="last")
    hubert = frozen_model(speech_dirs, "hubert")
    changed = frozen_model(speech_dirs, "wavlm")
    with torch.no_grad():
        next(changed.backbone.model.encoder.parameters()).view(-1)[0] += 1e-3
    others = {frame_cache(other, tmp_path, amp_dtype=None).folder
              for other in (other_seed, last_layer, hubert, changed)}
    others.add(frame_cache(model, tmp_path, amp_dtype=torch.bfloat16).folder)  # states computed in bf16
    assert len(others) == 5 and folder not in others
    assert frame_cache(last_layer, tmp_path, amp_dtype=None).dim == model.backbone.output_dim
    assert frame_cache(model, tmp_path, amp_dtype=None).dim == 3 * model.backbone.output_dim


def test_a_group_norm_front_end_is_cached_one_utterance_at_a_time(corpus, tmp_path):
    """The base models' group-norm CNN normalises over the padded length: a state computed in a padded batch
    would depend on its batch, so each utterance's states are computed alone (docs/backbones.md)."""
    folder = save_tiny_wavlm(tmp_path / "group", feat_extract_norm="group", do_stable_layer_norm=False)
    model = frozen_model({"wavlm": folder}, "wavlm")
    assert not model.backbone.padding_invariant
    utts = utterances(corpus)[:4]
    cached = fill_frame_cache(model.backbone, utts, frame_cache(model, tmp_path, amp_dtype=None), device=CPU,
                              max_batch_s=60.0)
    for utt in utts:
        np.testing.assert_allclose(cached.by_id[utt.id].read().astype(np.float32), alone(model, utt),
                                   rtol=FLOAT16_RELATIVE, atol=1e-6)


def test_states_beyond_float16_are_an_error_naming_the_utterance(corpus, speech_dirs, tmp_path, monkeypatch):
    model = frozen_model(speech_dirs, "wav2vec2")
    real_states = model.backbone.layer_states

    def huge(waveforms, sample_mask):
        states, mask = real_states(waveforms, sample_mask)
        return states * 1e6, mask

    monkeypatch.setattr(model.backbone, "layer_states", huge)
    utts = utterances(corpus)[:1]
    with pytest.raises(SertoolError, match=f"{utts[0].id}.*beyond what float16 holds"):
        fill_frame_cache(model.backbone, utts, frame_cache(model, tmp_path, amp_dtype=None), device=CPU)


def test_a_shard_holds_fewer_utterances_when_a_row_holds_every_layer(tmp_path):
    assert FrameCache(tmp_path, "large-v3-last", dim=1280)._group_size == 128
    assert FrameCache(tmp_path, "wavlm-base-plus-weighted", dim=13 * 768)._group_size == 16
    assert FrameCache(tmp_path, "large-v3-weighted", dim=33 * 1280)._group_size == 3


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
    fill_frame_cache(model.backbone, utts, first, device=CPU)
    changed = utts[2]
    samples, rate = sf.read(changed.audio_path)
    sf.write(changed.audio_path, samples[::-1].copy(), rate, subtype="PCM_16")  # same length, other samples
    second = frame_cache(model, tmp_path / "features", amp_dtype=None)
    cached = fill_frame_cache(model.backbone, utts, second, device=CPU)
    assert second.misses == 1  # counted in its first pass; the second pass reads everything
    np.testing.assert_allclose(cached.by_id[changed.id].read().astype(np.float32), alone(model, changed),
                               rtol=FLOAT16_RELATIVE, atol=1e-6)
    # Another encoder (other weights) never reads these frames.
    other = SERModel(ModelConfig(backbone="whisper", backbone_path=str(save_tiny_whisper(tmp_path / "w2", seed=1)),
                                 layer_weighting="last", head_hidden_dim=8))
    assert frame_cache(other, tmp_path / "features", amp_dtype=None).folder != second.folder


@pytest.mark.parametrize(("backbone", "overrides", "speed_perturbation", "expected"), [
    ("fbank", {"layer_weighting": "weighted"}, 0.0, "--backbone fbank"),
    ("whisper", {"lora_rank": 2}, 0.0, "LoRA"),
    ("whisper", {"freeze_backbone": False}, 0.0, "fine-tuned (--no-freeze-backbone)"),
    ("wavlm", {"freeze_backbone": None}, 0.0, "fine-tuned (the default for --backbone wavlm)"),
    ("hubert", {"lora_rank": 2}, 0.0, "LoRA"),
    ("wav2vec2", {}, 0.1, "--speed-perturbation 0.1"),
])
def test_a_run_the_cache_cannot_serve_says_so_in_one_line_and_recomputes(corpus, speech_dirs, tmp_path, backbone,
                                                                        overrides, speed_perturbation, expected):
    config = backbone_config(corpus, speech_dirs.get(backbone), tmp_path / "features", backbone=backbone, **overrides)
    config.data.speed_perturbation = speed_perturbation
    config.train.epochs = 1
    messages = Messages()
    result = train(config, tmp_path / "run", reporter=messages)
    notes = [line for line in messages.lines if line.startswith("--feature-cache")]
    assert len(notes) == 1 and expected in notes[0] and "\n" not in notes[0]
    assert result.steps > 0 and not (tmp_path / "features").exists()


def test_every_frozen_encoder_is_cached_whatever_its_layers_but_not_under_speed_perturbation(speech_dirs):
    config = Config()
    for backbone in SAVERS:
        for layer_weighting in ("last", "weighted"):
            config.model.backbone = backbone
            assert frame_cache_refusal(config, frozen_model(speech_dirs, backbone,
                                                            layer_weighting=layer_weighting)) is None
    config.data.speed_perturbation = 0.1
    assert "--speed-perturbation" in (frame_cache_refusal(config, frozen_model(speech_dirs, "whisper")) or "")


def test_a_precomputed_state_is_refused_by_a_backbone_that_trains(whisper_dir):
    model = tiny_model(whisper_dir, freeze_backbone=False)
    frames = torch.zeros(1, 5, model.backbone.output_dim)
    with pytest.raises(ValueError, match="encoder trains"):
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
    cached = fill_frame_cache(model.backbone, utts, frame_cache(model, tmp_path, amp_dtype=None), device=CPU,
                              read_waveforms=model.reads_audio_beside_frames)
    assert isinstance(cached, CachedFrames) and cached.read_waveforms
    np.testing.assert_allclose(run_model(model, utts, device=CPU, frames=cached).emotion_unit,
                               run_model(model, utts, device=CPU).emotion_unit, rtol=0, atol=1e-3)


def test_a_floor_blend_run_validates_from_the_cache_as_from_the_audio(corpus, whisper_dir, tmp_path):
    """--floor-blend reads the audio beside the cached frames: its floor, and so every blend, are the same."""
    recomputed = train(backbone_config(corpus, whisper_dir, None, floor_blend=True), tmp_path / "recomputed")
    cached = train(backbone_config(corpus, whisper_dir, tmp_path / "features", floor_blend=True), tmp_path / "cached")
    assert [record["step"] for record in cached.history] == [0, 2, 4]  # step 0: the floor's validation
    for ours, theirs in zip(cached.history, recomputed.history, strict=True):
        assert ours["ccc_average"] == pytest.approx(theirs["ccc_average"], abs=1e-3)
    assert all("floor_blend" in record for record in cached.history)
