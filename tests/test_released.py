"""The authors' released dimensional models: parity with their forward, strict loading, long audio, CLI.

Tiny random models in their exact layout (tests/released_layout.py) are saved as their mixin saves them
and loaded by sertool; outputs are checked against their forward computed independently in the test.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from sertool.cli.commands import cli
from sertool.core.errors import SertoolError
from sertool.data.corpus import open_corpus
from sertool.inference.inputs import collect_inputs
from sertool.inference.predictions import read_predictions
from sertool.inference.predictor import InferenceOptions, open_predictor
from sertool.inference.windows import combine_windows, window_spans
from sertool.inference.workflows import predict_with
from sertool.inference.writers import read_json
from sertool.models.released import RELEASED_MODEL_IDS, convert_released_state
from sertool.models.released import released_arguments as checked_arguments
from sertool.store.model_folder import read_model_folder
from tests.cases import case
from tests.corpus_files import write_learnable_corpus
from tests.hub_cache import cache_as_hub_id
from tests.released_layout import (
    reference_predictions,
    released_arguments,
    released_state,
    save_backbone_config,
    save_released,
    speech_like,
)

# transformers' WavLM attention passes torch a bool padding mask with a float position bias.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")

SAMPLE_RATE = 16_000


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, Path]:
    """Stand-ins for microsoft/wavlm-large and openai/whisper-large-v3 (config; their weights go unused)."""
    root = tmp_path_factory.mktemp("backbones")
    return {kind: save_backbone_config(kind, root / kind) for kind in ("wavlm", "whisper")}


def write_clips(folder: Path, lengths: list[int]) -> tuple[list[Path], list[np.ndarray]]:
    paths, waveforms = [], []
    for index, length in enumerate(lengths):
        waveform = speech_like(length, seed=index)
        path = folder / f"clip{index}.wav"
        sf.write(path, waveform, SAMPLE_RATE, subtype="FLOAT")
        paths.append(path)
        waveforms.append(waveform)
    return paths, waveforms


def options(backbones: dict[str, Path], kind: str, **fields) -> InferenceOptions:
    return InferenceOptions(backbone_path=str(backbones[kind]), **fields)


@pytest.mark.parametrize("kind, method, gender", [("wavlm", "lora", True), ("whisper", "lora", False),
                                                  ("whisper", "finetune", False)])
def test_predictions_equal_their_forward_one_clip_at_a_time(kind, method, gender, backbones, tmp_path):
    arguments = released_arguments(kind, finetune_method=method, predict_gender=gender)
    state = released_state(kind, arguments)
    if kind == "whisper":
        # The encoder's own copy of the position table is stale: their forward installs the top-level one.
        state["backbone_model.encoder.embed_positions.weight"] = state["embed_positions"] + 1.0
    folder = save_released(tmp_path / "model", arguments, state)
    paths, waveforms = write_clips(tmp_path, [16_000, 27_200, 11_000])
    predictor = open_predictor(folder, options(backbones, kind, max_batch_s=1000.0))  # one padded batch
    output = predictor.predict(collect_inputs(paths)[0])
    values, genders = reference_predictions(kind, arguments, state, backbones[kind], waveforms)
    np.testing.assert_allclose(output.predictions.values, values, atol=1e-4, rtol=0)
    if gender:
        np.testing.assert_allclose(output.gender_probabilities, genders, atol=1e-5)
    else:
        assert output.gender_probabilities is None


@pytest.mark.parametrize("kind", ["wavlm", "whisper"])
def test_every_weight_comes_from_the_folder(kind, backbones, tmp_path):
    arguments = released_arguments(kind)
    state = released_state(kind, arguments)
    folder = save_released(tmp_path / "model", arguments, state)
    loaded = []
    for seed in (0, 1):  # random initialisation differs by seed; loaded weights do not
        torch.manual_seed(seed)
        loaded.append(open_predictor(folder, options(backbones, kind)).model.state_dict())
    assert loaded[0].keys() == loaded[1].keys()
    assert [key for key in loaded[0] if not torch.equal(loaded[0][key], loaded[1][key])] == []
    unused = read_model_folder(folder)["released"]["unused_weights"]
    if kind == "wavlm":
        assert unused == []
    else:  # exactly the parts their dimensional Whisper forward never runs
        assert set(unused) == {key for key in state if key in ("weights", "backbone_model.encoder.embed_positions.weight")
                               or key.startswith(("backbone_model.decoder.", "emotion_layer.", "detailed_out_layer."))}


def _rename(state: dict, old: str, new: str) -> None:
    state[new] = state.pop(old)


def _move_lora(state: dict) -> None:
    for key in [key for key in state if ".lora_" in key]:
        _rename(state, key, key.replace("layers.3.", "layers.1."))


MUTATIONS = {
    "renamed head": (lambda state: _rename(state, "arousal_layer.0.weight", "arousal_layer.1.weight"),
                     "unexpected weight arousal_layer.1.weight"),
    "foreign weight": (lambda state: state.__setitem__("adapter.weight", torch.zeros(2)), "unexpected weight adapter"),
    "missing weight": (lambda state: state.pop("backbone_model.encoder.layers.0.attention.k_proj.weight"),
                       "missing backbone.model.encoder.layers.0.attention.k_proj.weight"),
    "LoRA elsewhere": (_move_lora, "LoRA weight backbone_model.encoder.layers.1."),
    "wrong shape": (lambda state: state.__setitem__("weights", torch.zeros(3)),
                    "tensor backbone.layer_weights.logits has shape [3] where the model needs float32 [5]"),
}


@case("checkpoints", "a folder that is not exactly the authors' released layout (renamed, foreign, missing, "
      "misplaced-LoRA, wrongly shaped weights)",
      "refused in one line naming the weight")
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_folders_outside_their_layout_are_refused_in_one_line(mutation, backbones, tmp_path):
    arguments = released_arguments("wavlm")
    state = released_state("wavlm", arguments)
    change, message = MUTATIONS[mutation]
    change(state)
    folder = save_released(tmp_path / "model", arguments, state)
    with pytest.raises(SertoolError) as error:
        _ = open_predictor(folder, options(backbones, "wavlm")).model  # the model is built on first use
    assert message in str(error.value) and str(folder) in str(error.value) and "\n" not in str(error.value)


def test_the_cli_refuses_a_foreign_folder_with_one_line(backbones, tmp_path):
    arguments = released_arguments("wavlm")
    state = released_state("wavlm", arguments)
    _rename(state, "model_seq.0.weight", "model_seq.1.weight")
    folder = save_released(tmp_path / "model", arguments, state)
    paths, _ = write_clips(tmp_path, [16_000])
    result = CliRunner().invoke(cli, ["predict", str(folder), str(paths[0]), "--backbone-path", str(backbones["wavlm"])])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {folder}: not the layout of the authors' released wavlm_large "
                                                  "dimensional model (unexpected weight model_seq.1.weight); sertool only "
                                                  "loads folders with their exact weight names"]


@pytest.mark.parametrize("data, message", [
    ({"pretrain_model": "wavlm"}, "sertool supports the dimensional emotion models on wavlm_large and whisper_large"),
    ({"use_conv_output": False}, "use_conv_output=False"),
    ({"lora_rank": 0}, "lora_rank must be a positive integer"),
])
def test_unsupported_configurations_are_named(data, message):
    with pytest.raises(SertoolError, match=message):
        checked_arguments(data, source="folder")


def test_legacy_weight_norm_names_map_to_the_same_weights():
    arguments = checked_arguments(released_arguments("wavlm"), source="x")
    state = released_state("wavlm", arguments)
    legacy = {key.replace("parametrizations.weight.original0", "weight_g")
              .replace("parametrizations.weight.original1", "weight_v"): value for key, value in state.items()}
    assert legacy.keys() != state.keys()
    modern, _ = convert_released_state(arguments, state, state.__getitem__, source="x")
    renamed, _ = convert_released_state(arguments, legacy, legacy.__getitem__, source="x")
    assert modern.keys() == renamed.keys() and all(torch.equal(modern[key], renamed[key]) for key in modern)


def test_whisper_without_its_top_level_table_uses_the_encoder_copy():
    arguments = checked_arguments(released_arguments("whisper", finetune_method="finetune"), source="x")
    state = released_state("whisper", arguments)
    del state["embed_positions"]  # safetensors keeps one name of two tensors sharing memory
    converted, unused = convert_released_state(arguments, state, state.__getitem__, source="x")
    assert torch.equal(converted["backbone.encoder.embed_positions.weight"],
                       state["backbone_model.encoder.embed_positions.weight"])
    assert "backbone_model.encoder.embed_positions.weight" not in unused


def test_long_audio_is_windowed_for_the_15_s_whisper_model(backbones, tmp_path):
    arguments = released_arguments("whisper", finetune_method="finetune")
    state = released_state("whisper", arguments)
    folder = save_released(tmp_path / "model", arguments, state)
    waveform = speech_like(20 * SAMPLE_RATE, seed=7)
    sf.write(tmp_path / "talk.wav", waveform, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(SertoolError, match="at most 15 s"):  # one clip longer than the model's window
        open_predictor(folder, options(backbones, "whisper")).predict(collect_inputs([tmp_path / "talk.wav"])[0])
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(cli, ["predict", str(folder), str(tmp_path / "talk.wav"), "--out", str(out),
                                      "--backbone-path", str(backbones["whisper"])])
    assert result.exit_code == 0, result.output
    spans = window_spans(len(waveform), SAMPLE_RATE, 15.0, 5.0)  # predict's default: the model's 15 s
    assert len(spans) == 2
    per_window, _ = reference_predictions("whisper", arguments, state, backbones["whisper"],
                                          [waveform[start:end] for start, end in spans])
    np.testing.assert_allclose(read_predictions(out).values[0], combine_windows(spans, per_window), atol=1e-4)


@pytest.mark.parametrize("kind", ["wavlm", "whisper"])
def test_predict_runs_clips_up_to_15_s_whole_by_default(kind, backbones, tmp_path):
    """As their code and `evaluate` do: a 12-s clip is one 15-s input, not averaged over 10-s windows."""
    arguments = released_arguments(kind, finetune_method="lora")
    state = released_state(kind, arguments)
    folder = save_released(tmp_path / "model", arguments, state)
    paths, waveforms = write_clips(tmp_path, [12 * SAMPLE_RATE])
    predictor = open_predictor(folder, options(backbones, kind))
    assert predictor.input_s == 15.0
    whole, _ = reference_predictions(kind, arguments, state, backbones[kind], waveforms)
    predictions = predict_with(predictor, collect_inputs(paths)[0])
    np.testing.assert_allclose(predictions.values, whole, atol=1e-4)
    assert len(predictions.segments) == 0  # one window: the whole file
    windowed = predict_with(predictor, collect_inputs(paths)[0], window_s=10.0)  # an explicit window still wins
    assert len(windowed.segments) == 2


def test_the_pair_ensembles_offline_with_a_backbone_folder_per_member(backbones, tmp_path):
    """WavLM and Whisper members, each with its own backbone folder; the saved ensemble keeps both (relative to
    its folder, like the members) and predicts without any backbone flag."""
    corpus = write_learnable_corpus(tmp_path / "corpus", per_split={"Train": 2, "Development": 3})
    development = open_corpus(corpus).split("Development")
    folders, expected = [], []
    local = {kind: shutil.copytree(backbones[kind], tmp_path / "models" / "backbones" / kind) for kind in backbones}
    for kind in ("wavlm", "whisper"):
        arguments = released_arguments(kind, finetune_method="lora")
        state = released_state(kind, arguments)
        folders.append(str(save_released(tmp_path / "models" / kind, arguments, state)))
        expected.append(reference_predictions(kind, arguments, state, backbones[kind],
                                              [sf.read(utt.audio_path, dtype="float32")[0] for utt in development])[0])
    common = ["ensemble", *folders, "--corpus", str(corpus), "--split", "Development"]
    refused = CliRunner().invoke(cli, [*common, "--backbone-path", str(backbones["wavlm"])])
    assert refused.exit_code != 0 and "not Whisper" in refused.output  # one path for both cannot fit both
    save = tmp_path / "models" / "pair.json"
    result = CliRunner().invoke(cli, [*common, "--save", str(save), "--member-backbone-path", str(local["wavlm"]),
                                      "--member-backbone-path", str(local["whisper"])])
    assert result.exit_code == 0, result.output
    assert json.loads(save.read_text())["backbone_paths"] == ["backbones/wavlm", "backbones/whisper"]
    wrong = CliRunner().invoke(cli, [*common, "--member-backbone-path", str(backbones["wavlm"])])
    assert wrong.exit_code != 0 and "--member-backbone-path: 1 given for 2 members" in wrong.output
    import sertool

    moved = shutil.move(tmp_path / "models", tmp_path / "elsewhere")  # the ensemble's folder moves as a whole
    table = sertool.load(Path(moved) / "pair.json").predict([utt.audio_path for utt in development], table=True)
    np.testing.assert_allclose(table.values, (expected[0] + expected[1]) / 2, atol=1e-4)


@pytest.mark.slow
def test_the_ensemble_of_both_released_models_from_the_cli_by_hub_id(backbones, tmp_path, monkeypatch):
    """Hub ids resolved offline from a hub cache: the released models and the two backbones' configs."""
    import huggingface_hub.constants

    hf_cache = tmp_path / "hf"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus = write_learnable_corpus(tmp_path / "corpus", per_split={"Train": 2, "Development": 5})
    development = open_corpus(corpus).split("Development")
    expected_members = []
    for kind, repo_id, backbone_id in (("wavlm", RELEASED_MODEL_IDS[0], "microsoft/wavlm-large"),
                                       ("whisper", RELEASED_MODEL_IDS[1], "openai/whisper-large-v3")):
        arguments = released_arguments(kind, finetune_method="finetune" if kind == "whisper" else "lora")
        state = released_state(kind, arguments)
        cache_as_hub_id(hf_cache, repo_id, save_released(tmp_path / kind, arguments, state))
        cache_as_hub_id(hf_cache, backbone_id, backbones[kind])
        values, _ = reference_predictions(kind, arguments, state, backbones[kind],
                                          [sf.read(utt.audio_path, dtype="float32")[0] for utt in development])
        expected_members.append(dict(zip([utt.id for utt in development], values, strict=True)))
    result = CliRunner().invoke(cli, ["ensemble", *RELEASED_MODEL_IDS, "--corpus", str(corpus), "--split", "Development",
                                      "--out", str(tmp_path / "ens.csv"), "--save", str(tmp_path / "ens.json")])
    assert result.exit_code == 0, result.output
    predictions = read_predictions(tmp_path / "ens.csv")
    expected = np.stack([(expected_members[0][i] + expected_members[1][i]) / 2 for i in predictions.ids])
    np.testing.assert_allclose(predictions.values, expected, atol=1e-4)
    assert len(predictions) == 5 and "ensemble" in result.output
    # The saved ensemble names its members by hub id, and evaluates like a checkpoint.
    assert all(member in (tmp_path / "ens.json").read_text() for member in RELEASED_MODEL_IDS)
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "ens.json"), "--corpus", str(corpus),
                                      "--split", "Development", "--out", str(tmp_path / "eval.csv")])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(read_predictions(tmp_path / "eval.csv").take(predictions.ids).values, expected, atol=1e-4)
    # ... and in Python.
    import sertool

    table = sertool.load(tmp_path / "ens.json").predict([utt.audio_path for utt in development], table=True)
    np.testing.assert_allclose(table.values, np.stack([(expected_members[0][utt.id] + expected_members[1][utt.id]) / 2
                                                       for utt in development]), atol=1e-4)


@pytest.mark.parametrize("backbone, window_s, message", [
    ("fbank", 15.0, "applies to --backbone whisper only"),
    ("whisper", 40.0, "a window of at most 30 s"),
    ("whisper", -1.0, "give 0 or a window"),
])
@pytest.mark.parametrize("backbone_weights", ["published", "stored"])
def test_whisper_windows_are_checked(backbone, window_s, message, backbone_weights, backbones):
    from sertool.core.config import ModelConfig
    from sertool.models.ser_model import SERModel

    config = ModelConfig(backbone=backbone, whisper_window_s=window_s, fbank_dim=16, head_hidden_dim=8,
                         backbone_path=str(backbones["whisper"]) if backbone == "whisper" else None)
    with pytest.raises(SertoolError, match=message):
        SERModel(config, backbone_weights=backbone_weights)


def test_the_unit_scale_is_their_raw_sigmoid_output(backbones, tmp_path):
    """``scale="unit"`` / ``predict --scale unit``: the heads' sigmoid outputs before sertool's inferred 1 + 6·y,
    which is ``to_unit`` of the ratings; the CSV header and the JSON say the scale; a CSV has no unit scale."""
    import sertool

    arguments = released_arguments("wavlm", finetune_method="lora", predict_gender=False)
    state = released_state("wavlm", arguments)
    folder = save_released(tmp_path / "model", arguments, state)
    paths, waveforms = write_clips(tmp_path, [16_000, 27_200])
    model = sertool.load(folder, backbone_path=backbones["wavlm"])
    unit = model.predict([str(path) for path in paths], scale="unit", table=True)
    ratings = model.predict([str(path) for path in paths], table=True)
    reference, _ = reference_predictions("wavlm", arguments, state, backbones["wavlm"], waveforms)
    np.testing.assert_allclose(unit.values, (reference - 1) / 6, atol=2e-5, rtol=0)  # their raw sigmoid
    assert unit.scale == "unit" and ratings.scale == "ratings"
    np.testing.assert_allclose(unit.values, model._predictor.label_scaling.to_unit(ratings.values), atol=1e-12)
    assert model.predict(str(paths[0]), scale="unit") == pytest.approx(
        dict(zip(("arousal", "valence", "dominance"), unit.values[0], strict=True)))

    runner = CliRunner()
    common = ["predict", str(folder), *map(str, paths), "--backbone-path", str(backbones["wavlm"])]
    result = runner.invoke(cli, [*common, "--scale", "unit", "--out", str(tmp_path / "unit.csv")])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "unit.csv").read_text().splitlines()
    assert lines[0] == "FileName,EmoAct_unit,EmoVal_unit,EmoDom_unit"
    np.testing.assert_allclose([[float(cell) for cell in line.split(",")[1:]] for line in lines[1:]], unit.values,
                               atol=1e-6)
    result = runner.invoke(cli, [*common, "--scale", "unit", "--out", str(tmp_path / "unit.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "unit.json").read_text())["scale"] == [0.0, 1.0]
    with pytest.raises(SertoolError, match=r"unit\.json: predictions on the scale \[0\.0, 1\.0\]"):
        read_json(tmp_path / "unit.json")

    result = runner.invoke(cli, [*common, "--out", str(tmp_path / "ratings.csv")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["predict", str(tmp_path / "ratings.csv"), *map(str, paths), "--scale", "unit"])
    assert result.exit_code != 0 and "no unit scale" in result.output and "Traceback" not in result.output
    with pytest.raises(SertoolError, match="ratings.csv: predictions read from a file hold ratings"):
        sertool.load(tmp_path / "ratings.csv").predict(str(paths[0]), scale="unit")
    with pytest.raises(SertoolError, match="scale"):
        model.predict(str(paths[0]), scale="0..1")


def test_an_ensemble_is_on_its_members_unit_scale_and_refuses_a_csv_member(tmp_path):
    """An ensemble's unit scale is its members' one (the mean of ratings maps to the mean of unit values,
    spread and segments alike); a predictions-CSV member has none, and the message names it."""
    from sertool.inference.predictions import Predictions, Segment, write_predictions
    from sertool.inference.predictor import CsvPredictor, EnsemblePredictor, on_scale
    from sertool.models.heads import LabelScaling

    class Member:
        name, label_scaling = "member.pt", LabelScaling()

    ensemble = EnsemblePredictor.__new__(EnsemblePredictor)
    ensemble.name, ensemble.members = "ens.json", [Member(), Member()]
    ratings = Predictions(["a"], np.array([[1.0, 4.0, 7.0]]), spread=np.array([[0.6, 1.2, 0.0]]),
                          segments=[Segment("a", 0.0, 1.0, (2.5, 4.0, 5.5))])
    unit = on_scale(ratings, ensemble, "unit")
    np.testing.assert_allclose(unit.values, [[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(unit.spread, [[0.1, 0.2, 0.0]])
    assert unit.segments[0].values == pytest.approx((0.25, 0.5, 0.75)) and unit.scale == "unit"
    assert on_scale(ratings, ensemble, "ratings") is ratings
    with open(tmp_path / "member.csv", "w", newline="") as handle:
        write_predictions(ratings, handle)
    ensemble.members = [Member(), CsvPredictor(tmp_path / "member.csv")]
    with pytest.raises(SertoolError, match=r"member\.csv: predictions read from a file hold ratings"):
        on_scale(ratings, ensemble, "unit")


@pytest.mark.parametrize("kind, backbone_id, files", [
    ("wavlm", "microsoft/wavlm-large", "config.json preprocessor_config.json"),
    ("whisper", "openai/whisper-large-v3", "config.json"),
])
def test_a_missing_backbone_is_refused_at_load_naming_its_files_and_the_callers_option(
        kind, backbone_id, files, backbones, tmp_path, monkeypatch, offline_hub):
    """Offline, with the backbone in no cache: `sertool.load` (not the first predict) and the CLI refuse in
    one line that names the only files needed (the released model stores the weights) and the option as
    the caller spells it."""
    import huggingface_hub.constants

    import sertool

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    arguments = released_arguments(kind, finetune_method="finetune")
    folder = save_released(tmp_path / "model", arguments, released_state(kind, arguments))
    download = f"`hf download {backbone_id} {files} --local-dir DIR`"
    with pytest.raises(SertoolError) as refused:
        sertool.load(folder)  # raises here, before any predict
    message = str(refused.value)
    assert message.startswith(f"{folder}: its speech backbone {backbone_id} is not in the local model-hub cache")
    assert download in message and "(not its weights)" in message
    assert message.endswith("pass backbone_path='DIR'") and "--backbone-path" not in message
    paths, _ = write_clips(tmp_path, [16_000])
    result = CliRunner().invoke(cli, ["predict", str(folder), str(paths[0])])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert download in result.output and "pass --backbone-path DIR" in result.output
    assert "backbone_path=" not in result.output
    # With the two files the message names, and nothing else of the backbone, it loads and predicts.
    assert sertool.load(folder, backbone_path=backbones[kind]).predict(str(paths[0]))["arousal"] > 0
    with pytest.raises(SertoolError, match=r"^backbone_path='.*empty': no config\.json in this folder"):
        (tmp_path / "empty").mkdir()
        sertool.load(folder, backbone_path=tmp_path / "empty")
