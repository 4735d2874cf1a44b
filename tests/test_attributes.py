"""A separate system per attribute (the paper's future work): `train --attributes`, and `ensemble` joining systems
of different attributes into one A/V/D system."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

import sertool
from sertool.cli.commands import cli
from sertool.core.constants import ATTRIBUTES
from sertool.core.errors import SertoolError
from sertool.data.corpus import open_corpus
from sertool.guards.outputs import OutputPlan
from sertool.inference.ensemble import select_per_attribute
from sertool.inference.predictions import Predictions, read_predictions_and_labels
from sertool.inference.predictor import InferenceOptions, open_predictor
from sertool.inference.workflows import ensemble
from sertool.inference.writers import READERS, WRITERS
from sertool.models.bootstrap import bootstrap_ccc
from sertool.models.losses import SERLoss
from sertool.models.ser_model import ModelOutput, SERModel
from sertool.models.utterance_stats import NUM_FEATURES, FloorBlend
from sertool.store.checkpoints import WEIGHTS_FILE, load_checkpoint, save_checkpoint, stored_state
from sertool.training.init_from import load_initial_weights
from sertool.training.loop import train
from sertool.training.setup import resolve_train_config
from tests.corpus_files import write_tiny_msp
from tests.systems import small_config
from tests.test_reliability import one_line_error

DEV = "Development"
FAST = ["--num-workers", "0", "--epochs", "1", "--batch-size", "4", "--head-hidden-dim", "8", "--accum-steps", "1"]


@pytest.fixture(scope="module")
def msp(tmp_path_factory) -> Path:
    return write_tiny_msp(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def runs(msp, tmp_path_factory) -> dict[str, Path]:
    """fbank systems on tiny_msp's corpus: one per attribute, a second valence system, and one of all three."""
    folder = tmp_path_factory.mktemp("runs")
    configs = {name: small_config(msp, epochs=4, attributes=(name,)) for name in ATTRIBUTES}
    configs["valence2"] = small_config(msp, epochs=4, attributes=("valence",))
    configs["valence2"].seed = 1
    configs["full"] = small_config(msp)
    for name, config in configs.items():
        train(config, folder / name)
    return {name: folder / name for name in configs}


def run(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)


def _ccc(pred: np.ndarray, true: np.ndarray) -> float:
    """The CCC of one column, from its definition (population moments)."""
    covariance = np.mean((pred - pred.mean()) * (true - true.mean()))
    return float(2 * covariance / (pred.var() + true.var() + (pred.mean() - true.mean()) ** 2))


def _predict(path: Path, utterances) -> Predictions:
    return open_predictor(path, InferenceOptions()).predict(utterances).predictions


def _saved_ensemble(members: list[Path], utterances, plan: Path):
    """``workflows.ensemble`` of ``members`` on Development, its plan saved as ``plan``."""
    outputs = OutputPlan()
    return ensemble(members, utterances, split=DEV, options=InferenceOptions(), outputs=outputs,
                    save=outputs.file(plan, flag="--save"))


def test_a_valence_run_has_the_valence_head_alone_and_logs_its_ccc_alone(runs):
    best = load_checkpoint(runs["valence"])
    assert best["attributes"] == ["valence"] and best["config"]["train"]["attributes"] == ["valence"]
    heads = {key.split(".")[2] for key in best["model_state"] if key.startswith("emotion_heads.heads.")}
    assert heads == {"valence"}
    assert set(best["metrics"]) == {"valence", "average"}
    records = [json.loads(line) for line in (runs["valence"] / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        scores = {key for key in record if key.startswith("ccc_")}
        assert scores == ({"ccc_valence", "ccc_average"} if record["type"] == "valid" else {"ccc_valence"})


def test_the_loss_of_one_attribute_is_its_ccc_loss_and_ignores_the_others_labels():
    generator = torch.Generator().manual_seed(0)
    predicted = torch.rand(9, 1, generator=generator, dtype=torch.float64)
    targets = torch.rand(9, 3, generator=generator, dtype=torch.float64)
    loss = SERLoss(small_config(Path("c")).model, attributes=("valence",))
    total, parts = loss(ModelOutput(emotion=predicted), targets)
    expected = 1 - _ccc(predicted[:, 0].numpy(), targets[:, 1].numpy())
    assert total.item() == pytest.approx(expected, abs=1e-6)
    assert set(parts) == {"ccc_valence", "emotion", "total"}
    others = targets.clone()
    others[:, [0, 2]] = torch.rand(9, 2, generator=generator, dtype=torch.float64)
    assert loss(ModelOutput(emotion=predicted), others)[0].item() == total.item()
    with pytest.raises(ValueError, match="of valence"):  # three columns of predictions for a valence loss
        loss(ModelOutput(emotion=targets), targets)


def test_best_pt_follows_the_valence_ccc_alone(runs, msp):
    records = [json.loads(line) for line in (runs["valence"] / "metrics.jsonl").read_text().splitlines()]
    validations = [record for record in records if record["type"] == "valid"]
    assert len(validations) == 4
    best, best_step = -np.inf, None
    for record in validations:
        assert record["ccc_average"] == record["ccc_valence"]
        assert record["improved"] == (record["ccc_valence"] > best)
        if record["improved"]:
            best, best_step = record["ccc_valence"], record["step"]
    checkpoint = load_checkpoint(runs["valence"])
    assert checkpoint["step"] == best_step and checkpoint["metrics"]["valence"] == best
    # What best.pt was kept for is the valence CCC of its predictions of the validation split.
    utterances = open_corpus(msp).split(DEV)
    values = _predict(runs["valence"], utterances).values[:, 0]
    assert _ccc(values, np.array([utt.valence for utt in utterances])) == pytest.approx(best, abs=1e-5)


def test_evaluate_prints_and_writes_the_valence_alone(runs, msp, tmp_path):
    out = tmp_path / "dev.csv"
    result = run("evaluate", runs["valence"], "--corpus", msp, "--split", DEV, "--out", out)
    assert result.exit_code == 0, result.output
    assert "valence" in result.output and "arousal" not in result.output and "dominance" not in result.output
    assert out.read_text().splitlines()[0] == "FileName,EmoVal,EmoVal_true"
    predictions, labels = read_predictions_and_labels(out)
    assert predictions.attributes == ("valence",)
    assert f"{_ccc(predictions.values[:, 0], labels[:, 0]):.4f}" in result.output


def test_an_ensemble_takes_each_attribute_from_its_members_and_averages_those_that_share_one(runs, msp, tmp_path):
    utterances = open_corpus(msp).split(DEV)
    names = ["arousal", "valence", "dominance", "valence2"]
    result = _saved_ensemble([runs[name] for name in names], utterances, tmp_path / "avd.json")
    assert result.predictions.attributes == ATTRIBUTES
    members = {name: _predict(runs[name], utterances).values[:, 0] for name in names}
    combined = result.predictions.values
    np.testing.assert_array_equal(combined[:, 0], members["arousal"])
    np.testing.assert_array_equal(combined[:, 2], members["dominance"])
    np.testing.assert_allclose(combined[:, 1], (members["valence"] + members["valence2"]) / 2, rtol=1e-15)
    np.testing.assert_allclose(result.predictions.spread[:, 1], np.abs(members["valence"] - members["valence2"]) / 2,
                               rtol=1e-12)
    assert result.predictions.spread[:, [0, 2]].tolist() == [[0.0, 0.0]] * len(utterances)
    # Each row is scored on what it predicts: a member on its attribute, the ensemble on all three.
    assert [set(row.ccc) for row in result.member_scores] == [{name, "average"} for name in
                                                              ("arousal", "valence", "dominance", "valence")]
    assert set(result.ensemble_scores.ccc) == {*ATTRIBUTES, "average"}
    plan = json.loads((tmp_path / "avd.json").read_text())
    assert {name: [entry["member"] for entry in plan["attributes"][name]["members"]] for name in ATTRIBUTES} \
        == {"arousal": [0], "valence": [1, 3], "dominance": [2]}
    # Reloaded, the saved ensemble predicts exactly the same (sertool.load, evaluate and predict take it).
    model = sertool.load(tmp_path / "avd.json")
    assert model.attributes == ATTRIBUTES
    table = model.predict([str(utt.audio_path) for utt in utterances], table=True)
    np.testing.assert_allclose(table.values, combined, rtol=0, atol=1e-12)
    rows = model.predict([str(utt.audio_path) for utt in utterances])
    assert [sorted(row) for row in rows] == [sorted(ATTRIBUTES)] * len(utterances)


def test_an_ensemble_without_an_attribute_predicts_the_others_and_refuses_a_submission(runs, msp, tmp_path):
    utterances = open_corpus(msp).split(DEV)
    result = _saved_ensemble([runs["arousal"], runs["valence"]], utterances, tmp_path / "av.json")
    assert result.predictions.attributes == ("arousal", "valence")
    assert open_predictor(tmp_path / "av.json", InferenceOptions()).attributes == ("arousal", "valence")
    plan = json.loads((tmp_path / "av.json").read_text())
    plan["attributes"]["dominance"] = plan["attributes"]["arousal"]  # from the arousal system, which has none
    (tmp_path / "avd.json").write_text(json.dumps(plan))
    with pytest.raises(SertoolError, match="avd.json: takes dominance from .*arousal, which predicts only arousal"):
        open_predictor(tmp_path / "avd.json", InferenceOptions())
    submission = tmp_path / "sub.csv"
    refusals = [run("predict", tmp_path / "av.json", "--corpus", msp, "--split", "Test1", "--submission", submission),
                run("ensemble", runs["arousal"], runs["valence"], "--corpus", msp, "--split", "Test1",
                    "--submission", submission)]
    for refused in refusals:
        line = one_line_error(refused)
        assert "a submission needs arousal, valence, dominance" in line and "predicts no dominance" in line
    line = one_line_error(run("predict", runs["valence"], "--corpus", msp, "--split", "Test1",
                              "--submission", submission))
    assert f"but {runs['valence']} predicts no arousal or dominance" in line
    assert not submission.exists()
    joined = [runs[name] for name in ATTRIBUTES]
    accepted = run("ensemble", *joined, "--corpus", msp, "--split", "Test1", "--submission", submission)
    assert accepted.exit_code == 0, accepted.output
    assert submission.read_text().splitlines()[0] == "FileName,EmoAct,EmoVal,EmoDom"


def test_a_checkpoint_without_attributes_predicts_all_three(runs, msp, tmp_path):
    payload = load_checkpoint(runs["full"])
    assert payload["attributes"] == list(ATTRIBUTES)
    for key in ("attributes", WEIGHTS_FILE):
        del payload[key]
    del payload["config"]["train"]["attributes"]
    save_checkpoint(payload, tmp_path / "old.pt")
    utterances = open_corpus(msp).split(DEV)
    old = open_predictor(tmp_path / "old.pt", InferenceOptions())
    assert old.attributes == ATTRIBUTES
    np.testing.assert_array_equal(old.predict(utterances).predictions.values, _predict(runs["full"], utterances).values)


def test_the_attributes_flag_takes_a_comma_separated_list_in_any_order(msp, tmp_path):
    result = run("train", "--corpus", msp, "--backbone", "fbank", "--attributes", "dominance,arousal", "--out",
                 tmp_path / "r", *FAST)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "r")["attributes"] == ["arousal", "dominance"]
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["train"]["attributes"] == ["dominance",
                                                                                                   "arousal"]
    for value, message in (("none", "train.attributes (--attributes): no attribute"),
                           ("valence,valence", "train.attributes (--attributes): valence is named twice")):
        line = one_line_error(run("train", "--corpus", msp, "--backbone", "fbank", "--attributes", value,
                                  "--out", tmp_path / value, *FAST))
        assert message in line
    unknown = run("train", "--corpus", msp, "--attributes", "valence,joy", "--out", tmp_path / "j", *FAST)
    assert unknown.exit_code == 2 and "'joy' is not one of" in unknown.output


def test_predictions_of_fewer_attributes_round_trip_through_csv_and_json(tmp_path):
    predictions = Predictions(["a.wav", "b.wav"], [[3.25, 1.5], [6.0, 4.125]], attributes=("arousal", "dominance"))
    for name, writer in WRITERS.items():
        path = tmp_path / f"p.{name}"
        with open(path, "w", newline="") as handle:
            writer(predictions, handle)
        loaded = READERS[name](path)
        assert loaded.attributes == ("arousal", "dominance")
        np.testing.assert_array_equal(loaded.values, predictions.values)
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "FileName,EmoAct,EmoDom"


def test_a_bootstrap_scores_each_system_on_its_own_attributes():
    rng = np.random.default_rng(0)
    labels = rng.uniform(1, 7, size=(40, 3))
    full = labels + rng.normal(0, 1, size=labels.shape)
    result = bootstrap_ccc([full, full[:, [1]]], labels, num_resamples=50, attributes=[ATTRIBUTES, ("valence",)])
    assert set(result.interval(1)) == {"valence", "average"}
    assert result.interval(1)["valence"] == result.interval(0)["valence"] == result.interval(1)["average"]
    difference = result.difference(0, 1)
    assert set(difference) == {"valence"}  # an average of three against one of valence is no difference
    assert (difference["valence"].low, difference["valence"].high) == (0.0, 0.0)


def test_the_floor_blend_of_one_attribute_is_that_column_of_the_full_blend():
    full = FloorBlend()
    generator = torch.Generator().manual_seed(0)
    for buffer in (full.weights, full.intercept):
        buffer.copy_(torch.randn(buffer.shape, generator=generator, dtype=torch.float64) * 0.1)
    full.alphas.fill_(1.0)
    full.blend.copy_(torch.tensor([0.2, 0.6, 0.9], dtype=torch.float64))
    valence = FloorBlend(attributes=("valence",))
    valence.load_state_dict(full.state_dict())
    standardised = torch.randn(5, NUM_FEATURES, generator=generator, dtype=torch.float64)
    network = torch.rand(5, 3, generator=generator)
    torch.testing.assert_close(valence(network[:, [1]], standardised), full(network, standardised)[:, [1]],
                               rtol=0, atol=0)
    valence.take_blend(np.array([0.35]))
    assert valence.blend.tolist() == [0.2, 0.35, 0.9]  # the other attributes' weights are left as they were


def test_init_from_a_model_of_other_attributes_starts_the_added_heads_fresh_and_leaves_the_others():
    config = small_config(Path("c")).model
    torch.manual_seed(0)
    full = SERModel(config)
    valence = SERModel(config, attributes=("valence",))
    notes = load_initial_weights(valence, {"model_state": stored_state(full), "attributes": list(ATTRIBUTES)},
                                 source="m")
    assert notes == ["--init-from m: its arousal head, dominance head weights do not fit this run and are not used"]
    for key, value in valence.emotion_heads.heads["valence"].state_dict().items():
        torch.testing.assert_close(value, full.emotion_heads.heads["valence"].state_dict()[key], rtol=0, atol=0)
    notes = load_initial_weights(SERModel(config), {"model_state": stored_state(valence), "attributes": ["valence"]},
                                 source="v")
    assert notes == ["--init-from v: arousal head, dominance head not in that model (or of another shape): it starts "
                     "from random weights"]


def test_init_from_predicts_the_initial_models_attributes_unless_told_otherwise(runs, tmp_path):
    flags = {"train__init_from": str(runs["valence"])}
    config, _, _ = resolve_train_config(None, flags, out=str(tmp_path / "r"), resume=None)
    assert config.train.attribute_names() == ("valence",)
    config, _, _ = resolve_train_config(None, {**flags, "train__attributes": ("valence", "arousal")},
                                        out=str(tmp_path / "r"), resume=None)
    assert config.train.attribute_names() == ("arousal", "valence")


def test_the_per_attribute_choice_chooses_among_the_members_that_predict_each_attribute():
    rng = np.random.default_rng(1)
    labels = rng.uniform(1, 7, size=(30, 3))
    ids = [f"{index}.wav" for index in range(30)]
    noisy = Predictions(ids, labels + rng.normal(0, 2, size=labels.shape))
    valence = Predictions(ids, labels[:, [1]], attributes=("valence",))  # perfect, and of valence alone
    plan = select_per_attribute([noisy, valence], labels)
    assert dict(plan.weights) == {"arousal": ((0, 1.0),), "valence": ((1, 1.0),), "dominance": ((0, 1.0),)}
    assert plan.development_ccc is not None and plan.development_ccc["valence"] == pytest.approx(1.0)
    plan = select_per_attribute([valence, valence.take(ids[::-1])], labels)
    assert plan.attributes == ("valence",)  # nobody predicts arousal or dominance


def test_an_exported_valence_model_says_what_it_predicts_and_takes_its_own_scores_alone(runs, msp, tmp_path):
    own, other = tmp_path / "valence-scores.json", tmp_path / "full-scores.json"
    for model, scores in ((runs["valence"], own), (runs["full"], other)):
        assert run("evaluate", model, "--corpus", msp, "--split", DEV, "--scores", scores).exit_code == 0
    result = run("export", runs["valence"], "--out", tmp_path / "model", "--scores", own)
    assert result.exit_code == 0, result.output
    card = (tmp_path / "model" / "README.md").read_text()
    assert "# model: valence from speech" in card and "CCC valence" in card
    assert "arousal" not in card.split("## Intended use")[0]  # the card's model and scores: valence alone
    assert open_predictor(tmp_path / "model", InferenceOptions()).attributes == ("valence",)
    line = one_line_error(run("export", runs["valence"], "--out", tmp_path / "other", "--scores", other))
    assert "not the CCC of valence, average (those of this model) alone" in line
