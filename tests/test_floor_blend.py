"""The floor inside the model (model.floor_blend): the floor it carries predicts what `sertool baseline` wrote
(the baseline's own output is the reference); the blend weight is chosen on the validation split by CCC; the
heads train alone; step 0 is validated so that best.pt is never worse than the floor on Development; the
floor and the chosen weights travel with every checkpoint and exported folder."""
from __future__ import annotations

import contextlib
import dataclasses
import json

import numpy as np
import pytest
import torch

from sertool.api import load
from sertool.baseline.options import BaselineOptions
from sertool.baseline.run import run_baseline
from sertool.core.config import Config
from sertool.data.corpus import open_corpus
from sertool.inference.inputs import corpus_split
from sertool.inference.predictions import read_predictions
from sertool.inference.predictor import open_predictor
from sertool.models.ccc import ccc_scores
from sertool.models.heads import LabelScaling
from sertool.models.ser_model import SERModel
from sertool.models.utterance_stats import (
    BLEND_GRID,
    NUM_FEATURES,
    UtteranceStatistics,
    _resampled_ccc,
    choose_blend,
    fit_utterance_statistics,
)
from sertool.runtime.runner import run_model
from sertool.store.checkpoints import load_checkpoint
from sertool.store.export import export_model
from sertool.store.options import ExportOptions
from sertool.training.loop import train
from tests.cases import case
from tests.corpus_files import write_learnable_corpus
from tests.systems import InterruptAt, small_config

ATTRIBUTES = ("arousal", "valence", "dominance")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_learnable_corpus(tmp_path_factory.mktemp("corpus") / "c",
                                  per_split={"Train": 16, "Development": 8, "Test1": 8})


@pytest.fixture(scope="module")
def floor(corpus, tmp_path_factory):
    """What `sertool baseline` writes for the corpus: the reference."""
    out = tmp_path_factory.mktemp("baseline")
    run_baseline(BaselineOptions(corpus=str(corpus), out=out, num_workers=0))
    return out


def _blend_config(corpus, **train_overrides) -> Config:
    config = small_config(corpus, **train_overrides)
    config.model.floor_blend = True
    return config


def _splits(corpus):
    utterances = open_corpus(str(corpus)).utterances
    return {name: [utt for utt in utterances if utt.split == name] for name in ("Train", "Development", "Test1")}


def _fitted_model(corpus) -> SERModel:
    torch.manual_seed(0)
    model = SERModel(_blend_config(corpus).model)
    splits = _splits(corpus)
    fit_utterance_statistics(model, splits["Train"], splits["Development"])
    return model


@contextlib.contextmanager
def _weight(model, blend):
    """The network's weight in the blend set to ``blend`` for every attribute inside the block."""
    stored = model.floor_blend.blend.clone()
    model.floor_blend.blend.fill_(blend)
    try:
        yield
    finally:
        model.floor_blend.blend.copy_(stored)


def _unit(model, utterances, *, blend):
    """Ids and unit-scale outputs at network weight ``blend`` (None: the model's stored weights)."""
    with _weight(model, blend) if blend is not None else contextlib.nullcontext():
        outputs = run_model(model, utterances, device=torch.device("cpu"))
    return outputs.ids, outputs.emotion_unit


def _ratings(model, utterances, *, blend):
    """Ids and predictions (1..7, as inference gives them) at network weight ``blend``."""
    ids, unit = _unit(model, utterances, blend=blend)
    return ids, model.label_scaling.ratings(unit)


def test_the_floor_in_the_model_predicts_what_the_baseline_wrote(corpus, floor):
    model = _fitted_model(corpus)
    ids, ours = _ratings(model, _splits(corpus)["Test1"], blend=0.0)
    reference = read_predictions(floor / "Test1.csv")
    expected = reference.values[[reference.ids.index(utt_id) for utt_id in ids]]
    assert expected.std(axis=0).min() > 0.1, "the floor should predict something here"
    # float32 statistics in the model, float64 in the baseline: the same predictions to a thousandth of a point
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-3)
    chosen = json.loads((floor / "summary.json").read_text())["alphas"]
    assert model.floor_blend.alphas.tolist() == [chosen[name] for name in ATTRIBUTES]


def test_the_blend_mixes_network_and_floor_per_attribute_and_training_sees_the_network_alone(corpus):
    model = _fitted_model(corpus)
    clips = _splits(corpus)["Development"]
    _, network = _ratings(model, clips, blend=1.0)
    _, alone = _ratings(model, clips, blend=0.0)
    weights = torch.tensor([0.25, 1.0, 0.0], dtype=torch.float64)
    model.floor_blend.blend.copy_(weights)
    outputs = run_model(model, clips, device=torch.device("cpu"))
    blended = model.label_scaling.ratings(outputs.emotion_unit)
    np.testing.assert_allclose(blended, weights.numpy() * network + (1 - weights.numpy()) * alone, atol=1e-5)
    assert torch.equal(model.floor_blend.blend, weights), "blended() puts the stored weights back"
    batch_waveforms = torch.randn(2, 16_000) * 0.1
    mask = torch.ones(2, 16_000, dtype=torch.bool)
    model.train()
    with torch.no_grad():
        trained = model(batch_waveforms, mask).emotion
        heads = model.emotion_heads(model.pooling(*model.backbone(batch_waveforms, mask)))
    torch.testing.assert_close(trained, heads, rtol=0, atol=0)


def _textbook_ccc(pred, true):  # independent of sertool.models.ccc
    cov = np.mean((pred - pred.mean()) * (true - true.mean()))
    return 2 * cov / (pred.var() + true.var() + (pred.mean() - true.mean()) ** 2)


def test_a_resample_is_scored_as_its_drawn_rows_would_be():
    rng = np.random.default_rng(1)
    predictions, labels = rng.normal(0.5, 0.1, size=(3, 50, 3)), rng.normal(4, 1, size=(50, 3))
    codes = rng.integers(0, 7, size=50)
    draws = rng.integers(0, 3, size=(5, 7)).astype(float)
    draws[:, 0] += 1  # no empty resample
    resampled = _resampled_ccc(predictions, labels, codes, draws)
    for g in range(3):
        for r in range(5):  # the rows of the resample: each group's utterances, as often as it was drawn
            rows = np.concatenate([np.tile(np.flatnonzero(codes == j), int(draws[r, j])) for j in range(7)])
            expected = [_textbook_ccc(predictions[g][rows, k], labels[rows, k]) for k in range(3)]
            np.testing.assert_allclose(resampled[g, r], expected, rtol=1e-9, atol=1e-12)


@case("values", "a floor blend whose candidate blends overshoot 1..7 on the validation split",
      "each weight scored on the clipped ratings inference will output")
def test_with_many_speakers_the_blend_approaches_the_best_ccc_of_the_grid():
    rng = np.random.default_rng(0)
    speakers = [f"s{index // 4}" for index in range(800)]  # 200 speakers of 4 utterances
    labels = rng.normal(4, 1, size=(800, 3))
    network = labels + rng.normal(0, [0.3, 3.0, 0.3], size=(800, 3))  # good, useless, good but overshooting:
    network[:, 2] += np.where(labels[:, 2] > 5, 30.0, 0.0)  # far above 7 where the label is high
    floor = labels + rng.normal(0, [3.0, 0.3, 1.0], size=(800, 3))
    chosen = choose_blend((network - 1) / 6, (floor - 1) / 6, labels, LabelScaling(), speakers=speakers,
                          confidence=0.5)
    for k in range(3):  # what the model outputs: the blend, clipped to 1..7
        scores = [_textbook_ccc(np.clip(w * network[:, k] + (1 - w) * floor[:, k], 1, 7), labels[:, k])
                  for w in BLEND_GRID]
        assert abs(chosen.weights[k] - BLEND_GRID[int(np.argmax(scores))]) <= 0.05 + 1e-9, k
        assert chosen.gain[k] == pytest.approx(max(scores) - scores[0], abs=0.01)
    assert chosen.weights[0] > 0.8 and chosen.weights[1] < 0.2 and chosen.weights[2] > 0.5
    unclipped = [_textbook_ccc(w * network[:, 2] + (1 - w) * floor[:, 2], labels[:, 2]) for w in BLEND_GRID]
    assert BLEND_GRID[int(np.argmax(unclipped))] < 0.5, "unclipped, the overshoot would choose the floor"


@case("values", "a floor blend chosen on a validation split of 2 speakers, where the network helps on one and "
      "hurts on the other", "the floor alone: a gain that does not hold across speakers moves nothing")
def test_a_gain_that_holds_on_one_speaker_only_keeps_the_floor():
    rng = np.random.default_rng(2)
    labels = rng.normal(4, 1, size=(80, 3))
    speakers = ["a"] * 40 + ["b"] * 40
    floor = 4 + 0.6 * (labels - 4) + rng.normal(0, 0.48, size=(80, 3))  # a sound floor, on both speakers
    network = labels + rng.normal(0, 0.2, size=(80, 3))  # excellent on speaker a,
    network[40:] = 4 + rng.normal(0, 0.2, size=(40, 3))  # nothing but noise on speaker b
    scaling = LabelScaling()
    chosen = choose_blend((network - 1) / 6, (floor - 1) / 6, labels, scaling, speakers=speakers)
    whole = [[_textbook_ccc(np.clip(w * network[:, k] + (1 - w) * floor[:, k], 1, 7), labels[:, k])
              for w in BLEND_GRID] for k in range(3)]
    assert all(BLEND_GRID[int(np.argmax(scores))] > 0 for scores in whole), "the split's best CCC takes the network"
    assert chosen.weights.tolist() == [0.0, 0.0, 0.0] and chosen.groups == 2
    assert all("the floor alone" in reason for reason in chosen.reasons().values())
    # The same split where the network is excellent for both speakers: it is taken, with the evidence.
    better = labels + rng.normal(0, 0.2, size=(80, 3))
    taken = choose_blend((better - 1) / 6, (floor - 1) / 6, labels, scaling, speakers=speakers)
    assert (taken.weights >= 0.75).all() and (taken.assured_gain > 0).all() and (taken.gain >= taken.assured_gain - 0.02).all()
    assert taken.reasons()["valence"].startswith(f"network weight {taken.weights[1]:.2f}: its blend gains +")


def test_a_tie_keeps_the_floor_and_the_choice_is_repeatable():
    labels = np.random.default_rng(3).normal(4, 1, size=(40, 3))
    constant = np.full((40, 3), 0.5)
    chosen = choose_blend(constant, constant, labels, LabelScaling(), speakers=None)
    assert chosen.weights.tolist() == [0.0, 0.0, 0.0], "no gain anywhere: the floor"
    network = (labels - 1) / 6 + np.random.default_rng(4).normal(0, 0.1, size=(40, 3))
    first, again = (choose_blend(network, constant, labels, LabelScaling(), speakers=None) for _ in range(2))
    assert first.weights.tolist() == again.weights.tolist() and (first.weights > 0).all()


def test_a_weight_of_zero_is_the_floor_even_when_the_network_is_not_finite(corpus):
    model = _fitted_model(corpus)
    standardised = torch.randn(4, NUM_FEATURES, dtype=torch.float64)
    model.floor_blend.blend.copy_(torch.tensor([0.0, 0.5, 1.0]))
    out = model.floor_blend(torch.full((4, 3), float("nan")), standardised)
    floor = model.floor_blend.intercept + standardised @ model.floor_blend.weights
    torch.testing.assert_close(out[:, 0], floor[:, 0].float(), rtol=0, atol=0)
    assert out[:, 1:].isnan().all()


def test_an_unfitted_floor_refuses_to_predict(corpus):
    model = SERModel(_blend_config(corpus).model)
    assert model.representation_dim == 2 * 32, "the statistics feed the floor, not the heads"
    with pytest.raises(RuntimeError, match="never fitted"):
        model.floor_blend(torch.zeros(2, 3), torch.zeros(2, NUM_FEATURES, dtype=torch.float64))


@pytest.mark.slow
def test_training_validates_the_floor_first_and_keeps_the_weights_it_chose(corpus, floor, tmp_path):
    # A learning rate that wrecks the heads: best.pt must still be no worse than the floor on Development.
    result = train(_blend_config(corpus, epochs=2, lr_heads=0.5), tmp_path / "run")
    floor_dev = json.loads((floor / "summary.json").read_text())["scores"]["Development"]["ccc"]
    first = result.history[0]
    assert first["step"] == 0 and first["improved"] and len(result.history) == 3  # step 0, each epoch's end
    assert first["ccc_average"] >= floor_dev["average"] - 2e-3
    assert result.best["average"] >= first["ccc_average"]
    reference = _fitted_model(corpus)
    clips = _splits(corpus)["Development"]
    labels = np.array([utt.labels() for utt in clips])
    for name in ("best.pt", "last.pt"):
        checkpoint = load_checkpoint(tmp_path / "run", name=name)
        state = checkpoint["model_state"]
        for key in ("weights", "intercept", "alphas"):
            torch.testing.assert_close(state[f"floor_blend.{key}"], getattr(reference.floor_blend, key),
                                       rtol=0, atol=0, msg=key)
        # The stored weights are those its validation chose, and its predictions are that blend's.
        record = next(r for r in result.history if r["step"] == checkpoint["step"])
        assert state["floor_blend.blend"].tolist() == [record["floor_blend"][name] for name in ATTRIBUTES]
        model = SERModel(_blend_config(corpus).model)
        model.load_state_dict(state)
        _, network = _unit(model, clips, blend=1.0)
        _, alone = _unit(model, clips, blend=0.0)
        assert state["floor_blend.blend"].numpy().tolist() == choose_blend(
            network, alone, labels, model.label_scaling, speakers=[utt.speaker for utt in clips]).weights.tolist()
        if name == "best.pt":  # what it predicts is the blend its validation scored
            _, blended = _ratings(model, clips, blend=None)
            assert ccc_scores(blended, labels)["average"] == pytest.approx(result.best["average"], abs=1e-6)


@pytest.mark.slow
def test_an_exported_blend_model_predicts_exactly_like_its_run(corpus, tmp_path):
    train(_blend_config(corpus), tmp_path / "run")
    export_model(tmp_path / "run", ExportOptions(out=tmp_path / "folder"))
    clips, _ = corpus_split(str(corpus), "Test1")
    run = open_predictor(tmp_path / "run").predict(clips).predictions.values
    folder = open_predictor(tmp_path / "folder").predict(clips).predictions.values
    assert np.isfinite(run).all() and run.std(axis=0).min() > 0
    np.testing.assert_array_equal(run, folder)
    loaded = load(tmp_path / "folder").predict([str(utt.audio_path) for utt in clips], table=True)
    np.testing.assert_array_equal(loaded.values, run)


@pytest.mark.slow
def test_a_resumed_blend_run_equals_an_uninterrupted_one(corpus, tmp_path):
    config = _blend_config(corpus, epochs=3, checkpoint_every_steps=1)
    straight = train(config, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", reporter=InterruptAt(3))
    resumed = train(Config(), tmp_path / "resumed", resume=True)
    assert resumed.history == straight.history and "floor_blend" in resumed.history[-1]
    for name in ("best.pt", "last.pt"):
        a = load_checkpoint(tmp_path / "resumed", name=name)["model_state"]
        b = load_checkpoint(tmp_path / "straight", name=name)["model_state"]
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_the_blend_leaves_the_networks_training_unchanged(corpus, tmp_path):
    """Same seed, with and without the floor: the same network weights after every step (only what best.pt
    holds and how it predicts differ)."""
    config = small_config(corpus, epochs=2)
    config.model.head_dropout = 0.3  # dropout draws from the RNG the floor's set-up and validations must not touch
    alone = train(config, tmp_path / "alone")
    blended = train(dataclasses.replace(config, model=dataclasses.replace(config.model, floor_blend=True)),
                    tmp_path / "blend")
    assert blended.steps == alone.steps
    a = load_checkpoint(tmp_path / "alone", name="last.pt")["model_state"]
    b = load_checkpoint(tmp_path / "blend", name="last.pt")["model_state"]
    assert set(a) < set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_training_never_computes_statistics_inside_the_model(corpus, tmp_path, monkeypatch):
    """The floor's Development predictions are computed once, from the clips' cached statistics, and the
    validations run the network alone: neither runs the statistics inside the model."""
    calls = []
    original = UtteranceStatistics.statistics

    def counting(self, waveforms, sample_mask):
        calls.append(len(waveforms))
        return original(self, waveforms, sample_mask)

    monkeypatch.setattr(UtteranceStatistics, "statistics", counting)
    result = train(_blend_config(corpus, epochs=1), tmp_path / "run")
    assert calls == []
    assert [record["step"] for record in result.history] == [0, result.steps]
    assert all("floor_blend" in record for record in result.history)


def _silence_and_square_wave() -> dict[str, np.ndarray]:
    """Inputs far outside any training clip: digital silence and a full-scale 100 Hz square wave, 1 s."""
    time_s = np.arange(16_000) / 16_000
    return {"silence": np.zeros(16_000, dtype=np.float32),
            "square wave": np.where(np.sin(2 * np.pi * 100 * time_s) >= 0, 1.0, -1.0).astype(np.float32)}


@pytest.mark.slow
@case("values", "silence and a full-scale square wave given to a floor-blend model",
      "predictions within 1..7 (the floor is clipped to the scale)")
def test_inputs_far_outside_the_training_clips_are_predicted_on_the_scale(corpus, tmp_path):
    train(_blend_config(corpus), tmp_path / "run")
    model = load(tmp_path / "run")
    network = open_predictor(tmp_path / "run").model
    for name, waveform in _silence_and_square_wave().items():
        # The ridge the floor is: a linear function of statistics far from the training clips' predicts far off
        # the scale (what the model used to output).
        inputs = (torch.from_numpy(waveform)[None], torch.ones(1, len(waveform), dtype=torch.bool))
        with torch.no_grad():
            ridge = network.floor_blend.intercept + network.utterance_stats.standardised(*inputs) @ \
                network.floor_blend.weights
            with network.floor_blend.left_out():
                alone = network(*inputs).emotion.double()
            blended = network(*inputs).emotion.double()
        assert ((ridge < 0) | (ridge > 1)).any(), f"{name}: the ridge should leave the unit scale here"
        # The model's own output: the sigmoid network blended with the ridge clipped to the unit scale.
        blend = network.floor_blend.blend
        torch.testing.assert_close(blended, blend * alone + (1 - blend) * ridge.clamp(0, 1), rtol=0, atol=1e-6)
        assert 0.0 <= blended.min() and blended.max() <= 1.0
        prediction = model.predict(waveform, sample_rate=16_000)
        assert all(1.0 <= prediction[attribute] <= 7.0 for attribute in ATTRIBUTES), (name, prediction)


@pytest.mark.slow
@case("values", "a linear-head model whose outputs overshoot 1..7 (evaluate, and the validation that chose best.pt)",
      "predictions clipped to 1..7; best.pt's recorded CCC is evaluate's CCC of those")
def test_a_linear_head_predicts_on_the_scale_and_best_pt_scores_what_evaluate_gives(corpus, tmp_path):
    config = small_config(corpus, epochs=2, lr_heads=0.05)
    config.model.head_output = "linear"
    result = train(config, tmp_path / "run")
    clips, _ = corpus_split(str(corpus), "Development")
    predictor = open_predictor(tmp_path / "run")
    unit = run_model(predictor.model, clips, device=torch.device("cpu")).emotion_unit
    assert ((unit < 0) | (unit > 1)).any(), "the linear head should overshoot the scale here"
    values = predictor.predict(clips).predictions.values
    assert values.min() >= 1.0 and values.max() <= 7.0
    np.testing.assert_allclose(values, np.clip(1 + 6 * unit.astype(np.float64), 1, 7), rtol=0, atol=1e-12)
    labels = np.array([utt.labels() for utt in clips])
    assert ccc_scores(values, labels)["average"] == pytest.approx(result.best["average"], abs=1e-9)
