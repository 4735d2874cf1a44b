"""The wide path (model.utterance_stats): the batched statistics against a numpy computation of each utterance
alone; the standardiser fitted on the training split's whole clips only, kept in every checkpoint, through
resume, predict and export; the per-clip dropout of the statistics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sertool.core.config import Config, ModelConfig
from sertool.data.corpus import open_corpus
from sertool.inference.inputs import corpus_split
from sertool.inference.predictor import open_predictor
from sertool.models.backbones.fbank import N_FFT, mel_filter_bank, raw_log_mel
from sertool.models.ser_model import SERModel
from sertool.models.utterance_stats import (
    NUM_FEATURES,
    Standardizer,
    UtteranceStatistics,
    feature_names,
    log_mel_statistics,
    utterance_statistics,
)
from sertool.store.checkpoints import load_checkpoint, load_stored_state, stored_state
from sertool.store.export import export_model
from sertool.store.options import ExportOptions
from sertool.training.loop import train
from tests.corpus_files import write_learnable_corpus
from tests.systems import InterruptAt, small_config

LENGTHS = [12_000, 400, 560, 7_777]  # 0.75 s; one frame; two frames; an odd length


def _padded(lengths, *, seed=0):
    """Clips of speech-like noise at very different levels; the padding is loud noise the statistics must ignore."""
    generator = torch.Generator().manual_seed(seed)
    waveforms = torch.randn(len(lengths), max(lengths), generator=generator)
    levels = torch.logspace(-2, 0, len(lengths)).unsqueeze(1)
    envelope = 1 + torch.sin(2 * torch.pi * 3.0 * torch.arange(max(lengths)) / 16_000)
    sample_mask = torch.arange(max(lengths)) < torch.tensor(lengths).unsqueeze(1)
    return torch.where(sample_mask, waveforms * levels * envelope, waveforms), sample_mask


def _numpy_statistics(frames: np.ndarray) -> np.ndarray:
    """The definitions, written out for one utterance's ``[F, 80]`` log-mel with numpy."""
    deltas = np.diff(frames, axis=0) if len(frames) > 1 else np.zeros_like(frames)
    energy = np.log(np.exp(frames).sum(axis=1))
    active = energy >= energy.max() - 30.0 * np.log(10.0) / 10.0
    energy_stats = [energy.mean(), energy.std(), *np.percentile(energy, [10, 50, 90]), active.mean()]
    return np.concatenate([frames.mean(axis=0), frames.std(axis=0), deltas.std(axis=0), energy_stats])


def test_batched_statistics_equal_each_utterance_alone_computed_with_numpy():
    waveforms, sample_mask = _padded(LENGTHS)
    filters, window = mel_filter_bank(), torch.hann_window(N_FFT)
    log_mel, lengths = raw_log_mel(waveforms, sample_mask, filters, window)
    batched = log_mel_statistics(log_mel.double(), lengths).numpy()
    assert batched.shape == (len(LENGTHS), NUM_FEATURES) == (len(LENGTHS), len(feature_names()))
    for row, length in enumerate(LENGTHS):
        alone, alone_lengths = raw_log_mel(waveforms[row:row + 1, :length], sample_mask[row:row + 1, :length],
                                           filters, window)
        frames = alone[0, :int(alone_lengths[0])].double().numpy()
        np.testing.assert_allclose(batched[row], _numpy_statistics(frames), rtol=1e-6, atol=1e-6)


def _wide_config(corpus, **train_overrides) -> Config:
    config = small_config(corpus, **train_overrides)
    config.model.utterance_stats = True
    return config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_learnable_corpus(tmp_path_factory.mktemp("corpus") / "c", per_split={"Train": 10, "Development": 6})


def test_standardizer_uses_the_moments_it_was_fitted_on_and_refuses_before():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(30, 5)) * [1, 10, 1e-3, 0, 5] + [0, -40, 3, 7, 1e4]
    standardizer = Standardizer(5)
    probe = torch.tensor(rng.normal(size=(4, 5)))
    with pytest.raises(RuntimeError, match="never fitted"):
        standardizer(probe)
    standardizer.fit(torch.tensor(rows))
    scale = rows.std(axis=0)
    scale[3] = 1.0  # a feature that never varied keeps scale 1
    expected = (probe.numpy() - rows.mean(axis=0)) / scale
    for mode in (standardizer.train(), standardizer.eval()):  # no mode moves the moments
        np.testing.assert_allclose(mode(probe).numpy(), expected, rtol=1e-12, atol=1e-12)
    assert float(standardizer.count) == len(rows)
    with pytest.raises(ValueError, match="non-finite"):
        standardizer.fit(torch.tensor([[np.nan] * 5]))


def test_the_wide_path_masks_padding_and_its_moments_travel_with_the_checkpoint():
    torch.manual_seed(0)
    config = ModelConfig(backbone="fbank", fbank_dim=16, head_hidden_dim=8, utterance_stats=True, aux=("gender",))
    model = SERModel(config)
    assert model.representation_dim == 2 * 16 + NUM_FEATURES
    waveforms, sample_mask = _padded(LENGTHS, seed=1)
    model.utterance_stats.standardizer.fit(model.utterance_stats.statistics(waveforms, sample_mask))
    model.eval()
    with torch.no_grad():
        batched = model(waveforms, sample_mask)
        for row, length in enumerate(LENGTHS):
            alone = model(waveforms[row:row + 1, :length], sample_mask[row:row + 1, :length])
            assert (batched.emotion[row] - alone.emotion[0]).abs().max() <= 1e-5
            assert (batched.gender_logits[row] - alone.gender_logits[0]).abs().max() <= 1e-5
    state = stored_state(model)
    assert float(state["utterance_stats.standardizer.count"]) == len(LENGTHS)
    rebuilt = SERModel(config).eval()
    load_stored_state(rebuilt, state, source="test")
    with torch.no_grad():
        assert torch.equal(rebuilt(waveforms, sample_mask).emotion, batched.emotion)


def test_dropout_replaces_whole_clips_by_the_training_mean_in_training_only():
    torch.manual_seed(0)
    waveforms, sample_mask = _padded([4_000] * 64)
    wide = UtteranceStatistics(dropout=0.5)
    wide.standardizer.fit(wide.statistics(waveforms, sample_mask))
    full = wide.eval()(waveforms, sample_mask)
    assert (full != 0).all(dim=1).all()
    dropped = wide.train()(waveforms, sample_mask)
    zero_rows = (dropped == 0).all(dim=1)
    assert 16 <= int(zero_rows.sum()) <= 48  # about half of 64 clips
    torch.testing.assert_close(dropped[~zero_rows], full[~zero_rows], rtol=0, atol=0)


def test_training_fits_the_standardiser_on_whole_training_clips_only(corpus, tmp_path):
    config = _wide_config(corpus, epochs=2)
    config.data.max_duration_s = 0.5  # training crops: the moments must still be the whole clips'
    train(config, tmp_path / "run")
    train_clips, _ = corpus_split(str(corpus), "Train")
    everything = open_corpus(str(corpus)).utterances
    expected = utterance_statistics(train_clips)
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(tmp_path / "run", name=name)["model_state"]  # weights_only inside
        assert float(state["utterance_stats.standardizer.count"]) == len(train_clips) < len(everything)
        np.testing.assert_allclose(state["utterance_stats.standardizer.mean"].numpy(), expected.mean(axis=0),
                                   rtol=1e-12, atol=1e-12)
        scale = expected.std(axis=0)
        np.testing.assert_allclose(state["utterance_stats.standardizer.scale"].numpy(),
                                   np.where(scale > 0, scale, 1.0), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_resume_keeps_the_moments_and_equals_an_uninterrupted_run(corpus, tmp_path):
    config = _wide_config(corpus, epochs=3, checkpoint_every_steps=1)
    config.model.utterance_stats_dropout = 0.5  # its masks come from the RNG a resume must restore
    straight = train(config, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", reporter=InterruptAt(3))
    resumed = train(Config(), tmp_path / "resumed", resume=True)
    assert resumed.history == straight.history
    a = load_checkpoint(tmp_path / "resumed", name="best.pt")["model_state"]
    b = load_checkpoint(tmp_path / "straight", name="best.pt")["model_state"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_an_exported_wide_model_predicts_exactly_like_its_run(corpus, tmp_path):
    train(_wide_config(corpus), tmp_path / "run")
    export_model(tmp_path / "run", ExportOptions(out=tmp_path / "folder"))
    clips, _ = corpus_split(str(corpus), "Development")
    run = open_predictor(tmp_path / "run").predict(clips).predictions.values
    folder = open_predictor(tmp_path / "folder").predict(clips).predictions.values
    assert np.isfinite(run).all() and run.std(axis=0).min() > 0
    np.testing.assert_array_equal(run, folder)


def test_statistics_see_the_level_that_the_encoder_normalises_away():
    """A gain moves the standardised level features and leaves the fbank encoder's input unchanged."""
    waveforms, sample_mask = _padded([8_000, 8_000])
    waveforms[1] = waveforms[0] * 8
    wide = UtteranceStatistics()
    wide.standardizer.fit(wide.statistics(waveforms, sample_mask))
    stats = wide(waveforms, sample_mask)
    level = feature_names().index("energy_mean")
    assert stats[1, level] - stats[0, level] == pytest.approx(2.0, abs=1e-4), "two rows: ±1 after standardising"
    encoder = SERModel(ModelConfig(backbone="fbank", fbank_dim=8)).backbone
    features, _ = encoder.log_mel(waveforms, sample_mask)
    assert torch.allclose(features[0], features[1], atol=1e-4)
