"""`sertool export --format onnx`: an ONNX folder predicts as its torch model, on every backbone, in every command."""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sertool.cli.commands import cli
from sertool.core.config import Config, ModelConfig
from sertool.core.errors import SertoolError
from sertool.data.records import Utterance
from sertool.inference.options import InferenceOptions
from sertool.inference.predictor import CheckpointPredictor, OnnxPredictor, open_predictor
from sertool.models.heads import LabelScaling
from sertool.models.ser_model import SERModel
from sertool.models.text import TEXT_POOLING
from sertool.models.utterance_stats import NUM_FEATURES
from sertool.store import onnx_folder
from sertool.store.checkpoints import save_checkpoint, stored_state
from sertool.store.export import export_model
from sertool.store.model_folder import load_model
from sertool.store.onnx_export import check_exportable
from sertool.store.onnx_folder import GRAPH_DATA_NAME, GRAPH_NAME, ONNX_FOLDER_FILES
from sertool.store.options import EXPORT_ONNX, ExportOptions
from sertool.training.loop import train
from tests.cases import case
from tests.corpus_files import write_learnable_corpus
from tests.hub_cache import cache_as_hub_id
from tests.model_files import record_files
from tests.systems import small_config
from tests.test_reliability import one_line_error
from tests.tiny_speech import save_tiny_hubert, save_tiny_wav2vec2, save_tiny_wavlm, save_tiny_whisper
from tests.tiny_text import save_tiny_text_encoder

onnxruntime = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

# transformers' WavLM attention passes torch a bool padding mask with a float position bias.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")

SAMPLE_RATE = 16_000
TOLERANCE = 1e-4  # on the 1..7 scale, float32
SCALING = LabelScaling()
BUILDERS = {"wavlm": save_tiny_wavlm, "hubert": save_tiny_hubert, "wav2vec2": save_tiny_wav2vec2,
            "whisper": save_tiny_whisper,
            # The base-size models' group-norm front end: padding changes its frames, in torch as in the graph.
            "wavlm-group": lambda folder: save_tiny_wavlm(folder, feat_extract_norm="group", do_stable_layer_norm=False)}
# Every backbone, and the parts a model may carry besides: projection, mean pooling, layer weighting or the last
# layer, the utterance statistics, the floor blend and the log-mel speaker statistics, a windowed Whisper.
VARIANTS: dict[str, dict] = {
    "fbank": dict(backbone="fbank", fbank_dim=32),
    "fbank-wide": dict(backbone="fbank", fbank_dim=32, utterance_stats=True, floor_blend=True, pooling="mean",
                       projection_dim=16, speaker_embedding="log-mel-stats"),
    "wavlm": dict(backbone="wavlm"),
    "wavlm-group": dict(backbone="wavlm", tiny="wavlm-group"),
    "wavlm-lora": dict(backbone="wavlm", freeze_backbone=True, lora_rank=4, layer_weighting="last"),
    "hubert": dict(backbone="hubert", pooling="mean"),
    "wav2vec2": dict(backbone="wav2vec2", layer_weighting="last", projection_dim=16),
    "whisper": dict(backbone="whisper"),
    "whisper-window": dict(backbone="whisper", whisper_window_s=3.0, layer_weighting="last"),
}
BATCHES_S = ((1.2, 0.7), (2.6, 0.3, 1.9))  # two batch sizes and lengths, each padded


def run(*args) -> object:
    return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)


def speech_like(num_samples: int, *, seed: int) -> np.ndarray:
    """Noise with a syllable-rate envelope plus a tone: louder and quieter stretches, like speech."""
    generator = np.random.default_rng(seed)
    time_s = np.arange(num_samples) / SAMPLE_RATE
    envelope = 1.0 + np.sin(2 * np.pi * 3.0 * time_s)
    return (0.1 * envelope * generator.standard_normal(num_samples)
            + 0.2 * np.sin(2 * np.pi * 220.0 * time_s)).astype(np.float32)


def padded(lengths_s, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch whose padding holds loud noise: the graph must ignore it, not merely expect zeros."""
    lengths = [round(length * SAMPLE_RATE) for length in lengths_s]
    waveforms = torch.from_numpy(np.random.default_rng(seed).standard_normal((len(lengths), max(lengths))))
    waveforms = waveforms.float()
    for row, length in enumerate(lengths):
        waveforms[row, :length] = torch.from_numpy(speech_like(length, seed=seed + row))
    return waveforms, torch.arange(max(lengths)) < torch.tensor(lengths).unsqueeze(-1)


def save_model(model: SERModel, config: Config, path: Path) -> Path:
    """``model`` as a checkpoint, as a run writes its best.pt (the parts an export reads)."""
    save_checkpoint({"config": config.to_dict(), "label_scaling": model.label_scaling.to_dict(),
                     "model_state": stored_state(model), "speakers": [], "training_ids": ["seen.wav"]}, path)
    return path


def fit_wide_parts(model: SERModel) -> None:
    """Fit the standardiser on real statistics and give the floor small weights and a blend per attribute."""
    if model.utterance_stats is None:
        return
    waveforms, sample_mask = padded((1.0, 1.5, 2.0, 0.8, 1.1), seed=7)
    model.utterance_stats.standardizer.fit(model.utterance_stats.statistics(waveforms, sample_mask))
    floor = model.floor_blend
    assert floor is not None
    with torch.no_grad():
        floor.weights.copy_(0.02 * torch.randn(NUM_FEATURES, 3, generator=torch.Generator().manual_seed(3)))
        floor.intercept.fill_(0.5)
        floor.alphas.fill_(1.0)
        floor.blend.copy_(torch.tensor([0.25, 0.6, 1.0]))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_speech")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def exported(tiny_models, tmp_path_factory) -> dict[str, tuple[CheckpointPredictor, OnnxPredictor]]:
    """Per variant: the torch predictor of a tiny random model's checkpoint, and that of its ONNX folder."""
    root = tmp_path_factory.mktemp("exported")
    pairs = {}
    for name, fields in VARIANTS.items():
        fields = dict(fields)
        tiny = fields.pop("tiny", fields["backbone"])
        config = Config()
        config.model = ModelConfig(backbone_path=str(tiny_models[tiny]) if tiny in tiny_models else None,
                                   head_hidden_dim=16, head_dropout=0.0, aux=("gender",), **fields)
        torch.manual_seed(0)
        model = SERModel(config.model)
        fit_wide_parts(model)
        with torch.no_grad():  # LoRA starts as the identity: give its adapters weights, so the graph must carry them
            for parameter_name, parameter in model.named_parameters():
                if parameter_name.endswith("lora_b"):
                    parameter.normal_(0.0, 0.05)
        checkpoint = save_model(model, config, root / f"{name}.pt")
        folder = export_model(checkpoint, ExportOptions(out=root / name, file_format=EXPORT_ONNX)).folder
        options = InferenceOptions(device="cpu")
        pairs[name] = (CheckpointPredictor(checkpoint, options), OnnxPredictor(folder, options))
    return pairs


def graph_outputs(predictor: OnnxPredictor, waveforms: torch.Tensor, sample_mask: torch.Tensor) -> list[np.ndarray]:
    return predictor.session.session.run(None, {"waveforms": waveforms.numpy(), "sample_mask": sample_mask.numpy()})


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_graph_equals_the_torch_model_at_two_batch_sizes_and_lengths(exported, variant):
    reference, exported_predictor = exported[variant]
    for seed, lengths_s in enumerate(BATCHES_S):
        waveforms, sample_mask = padded(lengths_s, seed=seed)
        with torch.no_grad():
            expected = reference.model(waveforms, sample_mask)
        emotion, gender = graph_outputs(exported_predictor, waveforms, sample_mask)
        assert emotion.shape == (len(lengths_s), 3)
        difference = np.abs(SCALING.ratings(emotion) - SCALING.ratings(expected.emotion.numpy())).max()
        assert difference <= TOLERANCE, (variant, lengths_s, difference)
        np.testing.assert_allclose(gender, expected.gender_logits.softmax(-1).numpy(), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("variant", [name for name in VARIANTS if name != "wavlm-group"])
def test_a_padded_batch_in_the_graph_equals_each_clip_alone(exported, variant):
    _, exported_predictor = exported[variant]
    lengths_s = BATCHES_S[1]
    waveforms, sample_mask = padded(lengths_s, seed=5)
    batch = SCALING.ratings(graph_outputs(exported_predictor, waveforms, sample_mask)[0])
    for row, length_s in enumerate(lengths_s):
        length = round(length_s * SAMPLE_RATE)
        alone = graph_outputs(exported_predictor, waveforms[row:row + 1, :length], sample_mask[row:row + 1, :length])[0]
        assert np.abs(SCALING.ratings(alone[0]) - batch[row]).max() <= TOLERANCE, (variant, length_s)


def test_the_folder_says_what_the_graph_takes(exported):
    _, windowed = exported["whisper-window"]
    config = json.loads((windowed.folder.folder / "config.json").read_text())
    assert config["format"] == "sertool-onnx"
    assert list(config["onnx"]["inputs"]) == ["waveforms", "sample_mask"]
    assert list(config["onnx"]["outputs"]) == ["emotion", "gender_probabilities"]
    assert config["onnx"]["max_input_samples"] == 3 * SAMPLE_RATE
    assert json.loads((windowed.folder.folder / "training_ids.json").read_text())["training_ids"] == ["seen.wav"]
    assert windowed.training_ids == frozenset({"seen.wav"}) and "training_ids" not in config
    card = (windowed.folder.folder / "README.md").read_text()
    assert "## ONNX" in card and "model.safetensors" not in card


def test_a_clip_longer_than_the_graph_takes_is_refused_as_the_torch_model_refuses_it(exported, tmp_path):
    import soundfile

    soundfile.write(tmp_path / "long.wav", speech_like(4 * SAMPLE_RATE, seed=1), SAMPLE_RATE)
    clip = Utterance(id="long.wav", audio_path=tmp_path / "long.wav", split="x", duration_s=4.0)
    for predictor in exported["whisper-window"]:
        with pytest.raises(SertoolError, match=r"at most 3 s\b.*; got an utterance of 4\.0 s: cut long audio into "
                                               r"windows of at most 3 s$"):
            predictor.predict([clip])


# ---- MM: the text embedding as a second input ----


def test_an_mm_graph_takes_the_text_embedding_its_folder_names(tmp_path):
    import soundfile

    text_model = save_tiny_text_encoder(tmp_path / "text", family="roberta")
    config = Config()
    config.model = ModelConfig(backbone="fbank", fbank_dim=32, head_hidden_dim=16, head_dropout=0.0, text=True,
                               text_model=str(text_model))
    torch.manual_seed(0)
    checkpoint = save_model(SERModel(config.model), config, tmp_path / "mm.pt")
    folder = export_model(checkpoint, ExportOptions(out=tmp_path / "mm", file_format=EXPORT_ONNX)).folder
    described = json.loads((folder / "config.json").read_text())["onnx"]
    assert list(described["inputs"]) == ["waveforms", "sample_mask", "text_embeddings"]
    # A local folder is recorded by its name only (a shared folder keeps no path of its author's disk).
    assert described["text_embedding"] == {"model": "text", "pooling": TEXT_POOLING, "max_tokens": 64, "dim": 64}
    utterances = []
    for index, (seconds, text) in enumerate(((1.4, "i am very happy"), (0.9, "the table is wooden"), (2.1, "sad"))):
        soundfile.write(tmp_path / f"{index}.wav", speech_like(round(seconds * SAMPLE_RATE), seed=index), SAMPLE_RATE)
        utterances.append(Utterance(id=f"{index}.wav", audio_path=tmp_path / f"{index}.wav", split="x",
                                    duration_s=seconds, transcript=text))
    options = InferenceOptions(device="cpu", cache_dir=str(tmp_path / "cache"), text_model=str(text_model))
    values = [open_predictor(model, options).predict(utterances).predictions.values for model in (checkpoint, folder)]
    assert np.abs(values[0] - values[1]).max() <= TOLERANCE
    # Another text changes the prediction: the graph reads its text input.
    changed = [Utterance(**{**vars(utterances[0]), "transcript": "i feel glad"})]
    assert np.abs(open_predictor(folder, options).predict(changed).predictions.values - values[1][0]).max() > 1e-6


def test_what_one_graph_cannot_hold_is_refused_with_one_line():
    with pytest.raises(SertoolError, match=r"^run: --format onnx cannot hold its speaker embedding \(me/xvector\).*"
                                           r"export it without --format onnx$"):
        check_exportable(ModelConfig(speaker_embedding="me/xvector"), source="run")
    with pytest.raises(SertoolError, match=r"text encoder, which trains \(LoRA, --lora-rank 4\)"):
        check_exportable(ModelConfig(text=True, lora_rank=4, freeze_backbone=True), source="run")
    check_exportable(ModelConfig(speaker_embedding="log-mel-stats", lora_rank=4, freeze_backbone=True), source="run")


# ---- the commands, on a trained run ----


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A trained fbank run (the recipe's floor blend on), its ONNX folder and a corpus."""
    root = tmp_path_factory.mktemp("trained")
    corpus = write_learnable_corpus(root / "c", per_split={"Train": 12, "Development": 6})
    config = small_config(corpus, epochs=1)
    config.model.floor_blend = True
    train(config, root / "run")
    result = run("export", root / "run", "--out", root / "onnx", "--format", "onnx")
    assert result.exit_code == 0, result.output
    return root / "run", root / "onnx", corpus


def read_csv_values(path: Path) -> tuple[list[str], np.ndarray]:
    rows = [line.split(",") for line in path.read_text().splitlines()]
    return [",".join(row[:1] + row[4:]) for row in rows], np.array([[float(value) for value in row[1:4]]
                                                                    for row in rows[1:]])


def test_predict_evaluate_ensemble_and_load_run_the_folder_as_the_run(trained, tmp_path):
    import soundfile

    import sertool

    run_dir, folder, corpus = trained
    assert sorted(path.name for path in folder.iterdir()) == sorted(set(ONNX_FOLDER_FILES) - {GRAPH_DATA_NAME})
    soundfile.write(tmp_path / "talk.wav", speech_like(7 * SAMPLE_RATE, seed=3), SAMPLE_RATE)
    for model, name in ((run_dir, "run"), (folder, "onnx")):
        assert run("predict", model, tmp_path / "talk.wav", "--window-s", "3", "--hop-s", "2",
                   "--out", tmp_path / f"{name}.csv").exit_code == 0
        assert run("evaluate", model, "--corpus", corpus, "--out", tmp_path / f"{name}-dev.csv").exit_code == 0
    for suffix in (".csv", "-dev.csv"):
        rows_run, values_run = read_csv_values(tmp_path / f"run{suffix}")
        rows_onnx, values_onnx = read_csv_values(tmp_path / f"onnx{suffix}")
        assert rows_run == rows_onnx  # the same files, windows and labels
        assert np.abs(values_run - values_onnx).max() <= TOLERANCE
    result = run("ensemble", run_dir, folder, "--corpus", corpus, "--json")
    assert result.exit_code == 0, result.output
    members = json.loads(result.stdout)["systems"][:2]
    np.testing.assert_allclose([members[0]["ccc"][key] for key in ("arousal", "valence", "dominance")],
                               [members[1]["ccc"][key] for key in ("arousal", "valence", "dominance")], atol=1e-3)
    assert members[0]["utterances"] == members[1]["utterances"]
    assert members[0]["excluded_trained_on"] == members[1]["excluded_trained_on"]
    by_load = [sertool.load(model, device="cpu").predict(str(tmp_path / "talk.wav"), window_s=3, hop_s=2)
               for model in (run_dir, folder)]
    assert max(abs(by_load[0][key] - by_load[1][key]) for key in by_load[0]) <= TOLERANCE


def test_a_hub_id_of_an_onnx_folder_runs_offline(trained, tmp_path, monkeypatch):
    import huggingface_hub.constants

    run_dir, folder, _ = trained
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache_as_hub_id(tmp_path / "hf", "me/fbank-onnx", folder)
    predictor = open_predictor("me/fbank-onnx", InferenceOptions(device="cpu"))
    assert isinstance(predictor, OnnxPredictor) and predictor.name == "me/fbank-onnx"


@case("checkpoints", "an ONNX model folder beside a planted pickle and `.py` file",
      "the folder holds JSON and protobuf only; opening and predicting unpickles and imports nothing")
def test_an_onnx_folder_holds_no_pickle_and_loading_it_runs_no_code(trained, tmp_path, monkeypatch):
    _, folder, corpus = trained
    for path in folder.iterdir():
        assert not path.read_bytes()[:8].startswith((b"\x80", b"PK")), f"{path.name} looks like a pickle or a zip"
    json.loads((folder / "config.json").read_text())
    graph = onnx.load(str(folder / GRAPH_NAME))
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}  # onnxruntime's own operators only
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    for path in folder.iterdir():
        (stranger / path.name).write_bytes(path.read_bytes())
    (stranger / "model.pt").write_bytes(pickle.dumps(Payload()))
    (stranger / "model.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")

    def refuse(*args, **kwargs):
        raise AssertionError("an ONNX folder was read with pickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert run("evaluate", stranger, "--corpus", corpus).exit_code == 0
    assert not marker.exists() and "model" not in sys.modules


@case("inference", "an ONNX model folder on a machine without onnxruntime",
      "one line naming onnxruntime, sertool's extra `onnx` and the pip command; nothing predicted")
def test_without_onnxruntime_an_onnx_folder_is_refused_naming_the_extra(trained, tmp_path, monkeypatch):
    _, folder, corpus = trained
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime → ImportError
    line = one_line_error(run("evaluate", folder, "--corpus", corpus))
    assert line == (f"error: {folder} (an ONNX model folder) needs onnxruntime, which is not installed (sertool's "
                    "extra `onnx`: onnx, onnxruntime): pip install 'onnx>=1.16' 'onnxruntime>=1.18'")
    line = one_line_error(run("export", trained[0], "--out", tmp_path / "again", "--format", "onnx"))
    assert "sertool export --format onnx needs onnxruntime" in line and not (tmp_path / "again").exists()


@case("checkpoints", "an ONNX folder whose config.json is of another export than its model.onnx or training_ids.json",
      "one line naming the two files: from different exports; export again")
def test_files_of_two_exports_are_refused(trained, tmp_path):
    _, folder, corpus = trained
    copy = tmp_path / "mixed"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    for name in ("config.json", "training_ids.json"):  # both of another export than the graph
        described = json.loads((copy / name).read_text())
        described["export_id"] = "0" * 32
        (copy / name).write_text(json.dumps(described))
    record_files(copy)  # sealed again: the export ids, not the seal, must tell the files apart
    assert one_line_error(run("evaluate", copy, "--corpus", corpus)) == (
        f"error: {copy}: config.json and model.onnx come from different exports (an interrupted overwrite?); export "
        "the model again")
    (copy / "training_ids.json").write_bytes((folder / "training_ids.json").read_bytes())
    assert one_line_error(run("evaluate", copy, "--corpus", corpus)) == (
        f"error: {copy}: training_ids.json does not belong to this export of config.json (an interrupted "
        "overwrite?); export the model again")


def test_an_onnx_folder_is_no_model_to_train_from(trained):
    with pytest.raises(SertoolError, match=r"an ONNX model folder \(sertool export --format onnx\).*holds no weights "
                                           r"to build a torch model from"):
        load_model(trained[1])


def test_options_the_graph_cannot_honour_are_refused(trained):
    with pytest.raises(SertoolError, match=r"^--amp bf16: .* is an ONNX graph, which runs in the float32"):
        open_predictor(trained[1], InferenceOptions(device="cpu", amp="bf16"))
    with pytest.raises(SertoolError, match=r"^--backbone-path and --text-model apply to --format onnx only"):
        export_model(trained[0], ExportOptions(out=str(trained[0].parent / "x"), backbone_path="me/wavlm"))


def test_weights_beyond_one_protobuf_file_go_beside_the_graph(trained, tmp_path, monkeypatch):
    run_dir, folder, _ = trained
    monkeypatch.setattr(onnx_folder, "_INLINE_WEIGHT_BYTES", 0)
    split = export_model(run_dir, ExportOptions(out=tmp_path / "split", file_format=EXPORT_ONNX)).folder
    weights = onnx.load(str(split / GRAPH_NAME), load_external_data=False).graph.initializer
    moved = [tensor for tensor in weights if tensor.data_location == onnx.TensorProto.EXTERNAL]
    assert moved and all(not tensor.raw_data for tensor in moved)
    places = [{entry.key: int(entry.value) for entry in tensor.external_data if entry.key != "location"}
              for tensor in moved]
    header = min(place["offset"] for place in places)  # the export id, before the tensors
    assert header > 0 and (split / GRAPH_DATA_NAME).stat().st_size == header + sum(place["length"] for place in places)
    waveforms, sample_mask = padded((1.3, 0.6), seed=2)
    options = InferenceOptions(device="cpu")
    outputs = [graph_outputs(OnnxPredictor(each, options), waveforms, sample_mask)[0] for each in (folder, split)]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    # Weights of another export (the graph reads them by offset alone) are refused, not read as garbage.
    data = bytearray((split / GRAPH_DATA_NAME).read_bytes())
    data[13:45] = b"0" * 32
    (split / GRAPH_DATA_NAME).write_bytes(bytes(data))
    with pytest.raises(SertoolError, match=r"^.*split: config\.json and model\.onnx\.data come from different exports"):
        OnnxPredictor(split, options)
    (split / GRAPH_DATA_NAME).unlink()
    with pytest.raises(SertoolError, match=r"keeps its weights in model\.onnx\.data, which is missing"):
        OnnxPredictor(split, options)


@pytest.mark.parametrize("kind", ["wavlm", "whisper"])
def test_the_authors_released_models_export_as_onnx(kind, tmp_path):
    """Their layout (LoRA on a stored backbone, no head norms, Whisper's 15-s window) through the graph."""
    from tests.released_layout import released_arguments, released_state, save_backbone_config, save_released

    backbone = save_backbone_config(kind, tmp_path / "backbone")
    arguments = released_arguments(kind)
    released = save_released(tmp_path / "released", arguments, released_state(kind, arguments))
    folder = export_model(released, ExportOptions(out=tmp_path / "onnx", file_format=EXPORT_ONNX,
                                                  backbone_path=str(backbone))).folder
    options = InferenceOptions(device="cpu", backbone_path=str(backbone))
    reference, exported_predictor = open_predictor(released, options), open_predictor(folder, options)
    waveforms, sample_mask = padded((2.2, 0.9), seed=4)
    with torch.no_grad():
        expected = SCALING.ratings(reference.model(waveforms, sample_mask).emotion.numpy())
    assert np.abs(SCALING.ratings(graph_outputs(exported_predictor, waveforms, sample_mask)[0]) - expected).max() \
        <= TOLERANCE
    assert exported_predictor.input_s == reference.input_s == 15.0


def test_a_run_folder_with_an_onnx_export_inside_still_means_its_best_pt(trained, tmp_path):
    import shutil

    run_dir = shutil.copytree(trained[0], tmp_path / "run")
    export_model(run_dir, ExportOptions(out=str(run_dir), file_format=EXPORT_ONNX))
    assert isinstance(open_predictor(run_dir, InferenceOptions(device="cpu")), CheckpointPredictor)


def test_a_model_of_fewer_attributes_gives_its_columns(tmp_path):
    import soundfile

    config = Config()
    config.model = ModelConfig(backbone="fbank", fbank_dim=32, head_hidden_dim=16, head_dropout=0.0)
    torch.manual_seed(0)
    model = SERModel(config.model, attributes=("dominance", "arousal"))
    checkpoint = tmp_path / "two.pt"
    save_checkpoint({"config": config.to_dict(), "label_scaling": model.label_scaling.to_dict(),
                     "attributes": list(model.attributes), "model_state": stored_state(model), "speakers": []},
                    checkpoint)
    folder = export_model(checkpoint, ExportOptions(out=tmp_path / "two", file_format=EXPORT_ONNX)).folder
    soundfile.write(tmp_path / "a.wav", speech_like(SAMPLE_RATE * 2, seed=8), SAMPLE_RATE)
    clip = [Utterance(id="a.wav", audio_path=tmp_path / "a.wav", split="x", duration_s=2.0)]
    options = InferenceOptions(device="cpu")
    outputs = [open_predictor(each, options).predict(clip).predictions for each in (checkpoint, folder)]
    assert outputs[0].attributes == outputs[1].attributes == ("arousal", "dominance")
    assert outputs[1].values.shape == (1, 2) and np.abs(outputs[0].values - outputs[1].values).max() <= TOLERANCE
    assert "arousal, dominance = np.clip(" in (folder / "README.md").read_text()
