"""`sertool export`: model folders that predict exactly like their run, hold no pickle, run no code."""
from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sertool.cli.commands import cli
from sertool.core.errors import SertoolError
from sertool.inference.predictor import open_predictor
from sertool.store.checkpoints import load_checkpoint, save_checkpoint
from sertool.store.export import export_model
from sertool.store.model_folder import FOLDER_FILES, load_model
from sertool.store.options import ExportOptions
from sertool.training.loop import train
from tests.cases import case
from tests.corpus_files import write_learnable_corpus, write_tone
from tests.hub_cache import cache_as_hub_id
from tests.model_files import as_before_digests, cast_floating, record_files, rewrite_weights
from tests.systems import small_config
from tests.test_reliability import one_line_error


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_learnable_corpus(tmp_path_factory.mktemp("corpus") / "c", per_split={"Train": 12, "Development": 6})


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runs") / "fbank"
    train(small_config(corpus), folder)
    return folder


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("audio")
    write_tone(folder / "long.wav", duration_s=7.0, sample_rate=22_050, channels=2)
    write_tone(folder / "short.wav", duration_s=1.2)
    return [folder / "long.wav", folder / "short.wav"]


def run(*args) -> object:
    return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)


def test_exported_folder_predicts_and_evaluates_exactly_like_its_run(run_dir, corpus, audio, tmp_path):
    result = run("export", run_dir, "--out", tmp_path / "model")
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in (tmp_path / "model").iterdir()) == sorted(FOLDER_FILES)
    for model, name in ((run_dir, "run"), (tmp_path / "model", "folder")):
        assert run("predict", model, *audio, "--window-s", "3", "--hop-s", "2", "--out", tmp_path / f"{name}.csv",
                   "--format", "csv").exit_code == 0
        assert run("evaluate", model, "--corpus", corpus, "--out", tmp_path / f"{name}-dev.csv").exit_code == 0
    assert (tmp_path / "run.csv").read_bytes() == (tmp_path / "folder.csv").read_bytes()
    assert (tmp_path / "run-dev.csv").read_bytes() == (tmp_path / "folder-dev.csv").read_bytes()


@case("checkpoints", "a model folder holding a pickle payload, a `.py` file and an `auto_map`",
      "both ignored, nothing unpickled or imported")
def test_the_folder_holds_no_pickle_and_loading_it_runs_no_code(run_dir, tmp_path, monkeypatch):
    folder = export_model(run_dir, ExportOptions(out=tmp_path / "model")).folder
    reference = load_checkpoint(run_dir)
    for path in folder.iterdir():
        head = path.read_bytes()[:8]
        assert not head.startswith((b"\x80", b"PK")), f"{path.name} looks like a pickle or a torch zip file"
    json.loads((folder / "config.json").read_text())
    # A stranger's folder: a pickle that would leave a marker when unpickled, and code beside the weights.
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    record_files(folder)  # a stranger's folder is whole: its config.json sealed as sertool would

    def refuse(*args, **kwargs):
        raise AssertionError("a model folder must not be unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    payload = load_model(folder)
    _ = open_predictor(folder).model  # builds the model from it
    assert not marker.exists()
    assert payload["model_state"].keys() == reference["model_state"].keys()
    assert all(torch.equal(payload["model_state"][key], value) for key, value in reference["model_state"].items())


def test_config_json_describes_the_model_and_the_card_its_data_and_metrics(run_dir, corpus, tmp_path):
    folder = export_model(run_dir, ExportOptions(out=tmp_path / "model")).folder
    config = json.loads((folder / "config.json").read_text())
    checkpoint = load_checkpoint(run_dir)
    assert config["format"] == "sertool-model" and config["architectures"] == ["SERModel"]
    # The run's config, its one local path (the corpus) by name: where it sat does not travel.
    assert config["config"] == {**checkpoint["config"], "data": {**checkpoint["config"]["data"], "corpus": "c"}}
    assert config["label_scaling"] == {"minimum": 1.0, "maximum": 7.0}
    assert config["pretrained"]["backbone"] == checkpoint["pretrained"]["backbone"]
    assert config["data"]["valid_split"] == "Development" and config["data"]["valid_utterances"] == 6
    assert config["data"]["train_utterances"] == 12 and config["data"]["corpus"] == corpus.name == "c"
    assert config["data"]["training_data_sha256"] == hashlib.sha256(
        "\n".join(sorted(checkpoint["training_ids"])).encode()).hexdigest()
    assert "training_ids" not in config
    assert json.loads((folder / "training_ids.json").read_text())["training_ids"] == checkpoint["training_ids"]
    card = (folder / "README.md").read_text()
    metrics = checkpoint["metrics"]
    row = "| Development | 6 | " + " | ".join(f"{metrics[name]:.4f}" for name in
                                             ("arousal", "valence", "dominance", "average")) + " |"
    assert row in card
    assert "Trained on split Train: 12 utterances" in card and "- Corpus: `c` (training utterances' SHA-256" in card
    for section in ("## Use", "## Training data", "## Metrics", "## Intended use", "## Limits", "## License",
                    "## Provenance"):
        assert section in card
    assert "optimistic" in card  # the validation split selected the checkpoint


def test_existing_model_files_are_kept_without_force(run_dir, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    export_model(run_dir, ExportOptions(out=folder))
    before = (folder / "model.safetensors").read_bytes()
    with pytest.raises(SertoolError, match="pass --force"):
        export_model(run_dir, ExportOptions(out=folder))
    export_model(run_dir, ExportOptions(out=folder, force=True))
    assert (folder / "notes.txt").read_text() == "mine"  # other files stay
    assert (folder / "model.safetensors").read_bytes() != before  # a new export id


@case("checkpoints", "a model folder whose two files come from different exports, a damaged `model.safetensors`",
      "refused in one line")
def test_files_of_two_exports_are_not_mixed(run_dir, tmp_path):
    first = export_model(run_dir, ExportOptions(out=tmp_path / "a")).folder
    second = export_model(run_dir, ExportOptions(out=tmp_path / "b")).folder
    (first / "model.safetensors").write_bytes((second / "model.safetensors").read_bytes())
    with pytest.raises(SertoolError, match="model.safetensors: its SHA-256 is not the one config.json records"):
        load_model(first)
    record_files(first)  # the digest made to match (as a folder of before digests had none): the export ids differ
    with pytest.raises(SertoolError, match="come from different exports"):
        load_model(first)
    (second / "model.safetensors").write_bytes(b"not a safetensors file")
    record_files(second)
    with pytest.raises(SertoolError, match="not a readable safetensors file"):
        load_model(second)


def test_push_to_hub_needs_a_token_before_any_work(run_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    result = run("export", run_dir, "--out", tmp_path / "model", "--push-to-hub", "me/model")
    assert result.exit_code == 2 and "hf auth login" in result.output
    assert not (tmp_path / "model").exists()
    with pytest.raises(SertoolError, match="owner/name"):
        export_model(run_dir, ExportOptions(out=tmp_path / "model", push_to_hub="no-owner"))


def test_push_to_hub_uploads_the_model_files(run_dir, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    calls = {}
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: calls.setdefault("repo", (repo_id, kwargs))
                        and f"https://hub.example/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kwargs: calls.setdefault("upload", kwargs))
    result = export_model(run_dir, ExportOptions(out=tmp_path / "model", push_to_hub="me/model"))
    assert result.url == "https://hub.example/me/model"
    assert calls["repo"] == ("me/model", {"repo_type": "model", "exist_ok": True})
    assert calls["upload"]["folder_path"] == str(tmp_path / "model") and calls["upload"]["repo_id"] == "me/model"
    assert sorted(calls["upload"]["allow_patterns"]) == sorted(FOLDER_FILES)


def _hub_failures() -> dict[str, tuple[Exception, str]]:
    """Each way an upload fails, as huggingface_hub raises it, and what the one line must say to do. The HTTP
    library's errors are taken from the one this huggingface_hub is built on (httpx, httpx2 or requests): its
    HTTPError is a base class of huggingface_hub's."""
    import importlib

    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    transport = importlib.import_module(HfHubHTTPError.__mro__[1].__module__.partition(".")[0])

    def answered(status: int, kind: type[HfHubHTTPError] = HfHubHTTPError) -> HfHubHTTPError:
        request = transport.Request("POST", "https://huggingface.co/api/repos/create")
        return kind(f"{status} Client Error for url {request.url}\nmore lines", response=transport.Response(
            status, request=request))

    return {
        "no network": (transport.ConnectError("[Errno -3] Temporary failure in name resolution"),
                       "cannot be reached .*check the network"),
        "a time-out": (transport.ReadTimeout("The read operation timed out"), "cannot be reached"),
        "offline mode": (OfflineModeIsEnabled("HF_HUB_OFFLINE is set"), "cannot be reached .*HF_HUB_OFFLINE"),
        "no token": (LocalTokenNotFoundError("Token is required"), "no model-hub token .*hf auth login"),
        "a refused token": (answered(401), "refused the token .*hf auth login"),
        "no permission": (answered(403), r"may not write to me/model \(403\); use a token with write access"),
        "no such repository": (answered(404, RepositoryNotFoundError), r"me/model was not found \(404"),
        "the hub's trouble": (answered(503), "the hub answered 503 .*try again later"),
        "anything else": (RuntimeError("unexpected answer"), r"upload failed \(RuntimeError: unexpected answer\)"),
    }


@case("checkpoints", "`export --push-to-hub` without network, with no or a refused token, no permission, no such "
      "owner, the hub failing, or any other error of the hub client",
      "one line saying what went wrong and what to do, and that the folder is complete, with the `hf upload` "
      "command that uploads it later (before: a raw httpx traceback)")
@pytest.mark.parametrize("failure", list(_hub_failures()))
@pytest.mark.parametrize("step", ["create_repo", "upload_folder"])
def test_every_push_failure_is_one_line_that_says_what_to_do(run_dir, tmp_path, monkeypatch, failure, step):
    from huggingface_hub import HfApi

    error, expected = _hub_failures()[failure]

    def fail(self, *args, **kwargs):
        raise error

    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: f"https://hub.example/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kwargs: None)
    monkeypatch.setattr(HfApi, step, fail)
    out = tmp_path / "model"
    line = one_line_error(run("export", run_dir, "--out", out, "--push-to-hub", "me/model"))
    assert re.search(expected, line), line
    assert line.endswith(f"{out} is complete: upload it later with `hf upload me/model {out}`")
    assert "more lines" not in line
    assert sorted(path.name for path in out.iterdir()) == sorted(FOLDER_FILES)


def test_a_hub_id_loads_the_cached_folder_offline(run_dir, audio, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache_as_hub_id(tmp_path / "hf", "me/fbank", export_model(run_dir, ExportOptions(out=tmp_path / "model")).folder)
    by_id = run("predict", "me/fbank", audio[1], "--out", tmp_path / "id.csv")
    by_run = run("predict", run_dir, audio[1], "--out", tmp_path / "run.csv")
    assert by_id.exit_code == by_run.exit_code == 0, by_id.output
    assert (tmp_path / "id.csv").read_bytes() == (tmp_path / "run.csv").read_bytes()
    missing = run("predict", "me/other", audio[1])
    assert missing.exit_code == 2
    assert missing.output.strip().splitlines() == [
        "error: me/other: no such file or folder here, not in the local model-hub cache, and the model hub cannot be "
        "reached. Download it on a machine with network access (`hf download me/other config.json "
        "model.safetensors README.md training_ids.json --local-dir DIR`), copy DIR here and pass DIR instead of the "
        "id."]


def test_export_of_a_released_model_predicts_like_the_released_folder(tmp_path):
    from sertool.inference.inputs import collect_inputs
    from sertool.inference.predictor import InferenceOptions
    from tests.released_layout import released_arguments, released_state, save_backbone_config, save_released

    backbone = save_backbone_config("wavlm", tmp_path / "backbone")
    arguments = released_arguments("wavlm")
    released = save_released(tmp_path / "released", arguments, released_state("wavlm", arguments))
    folder = export_model(released, ExportOptions(out=tmp_path / "model")).folder
    assert "1 + 6·y: an inferred mapping" in (folder / "README.md").read_text()
    write_tone(tmp_path / "clip.wav", duration_s=1.3)
    utterances = collect_inputs([tmp_path / "clip.wav"])[0]
    options = InferenceOptions(backbone_path=str(backbone))
    values = [open_predictor(model, options).predict(utterances).predictions.values for model in (released, folder)]
    np.testing.assert_array_equal(values[0], values[1])


@pytest.fixture(scope="module")
def blend_run_dir(corpus, tmp_path_factory) -> Path:
    """A run whose model carries the floor (``--floor-blend``, float64 buffers beside float32 weights)."""
    folder = tmp_path_factory.mktemp("runs") / "blend"
    config = small_config(corpus, epochs=1)
    config.model.floor_blend = True
    train(config, folder)
    return folder


@case("checkpoints", "a model folder whose tensors were all cast to float16 or float64 (safetensors rewritten, "
      "metadata kept), a floor-blend or a network-only model",
      "one line naming model.safetensors, the first tensor, its dtype and the model's; nothing predicted")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
@pytest.mark.parametrize("which", ["blend", "network"])
def test_a_folder_of_recast_tensors_is_refused_naming_the_tensor(which, dtype, run_dir, blend_run_dir, audio,
                                                                  tmp_path):
    source = blend_run_dir if which == "blend" else run_dir
    folder = export_model(source, ExportOptions(out=tmp_path / "model")).folder
    trained = load_checkpoint(source)["model_state"]  # the dtypes and shapes the model was trained with
    rewrite_weights(folder, cast_floating(dtype))
    result = run("predict", folder, audio[1])
    line = one_line_error(result)
    assert "EmoAct" not in result.output  # nothing predicted
    name = re.search(r"tensor (\S+) is ", line).group(1)
    needed = trained[name]
    dtype_name = str(dtype).removeprefix("torch.")
    assert line.startswith(f"error: {folder / 'model.safetensors'}: tensor {name} is {dtype_name} where the model "
                           f"needs {str(needed.dtype).removeprefix('torch.')} {list(needed.shape)}; ")
    assert needed.dtype != dtype and "export the model again" in line


@case("checkpoints", "a model folder with one tensor cast, or of the wrong shape (floor_blend.weights)",
      "one line naming the tensor, its dtype or shape and what the model needs")
@pytest.mark.parametrize("change, problem", [
    (lambda tensors: tensors.__setitem__("floor_blend.weights", tensors["floor_blend.weights"].half()),
     "is float16 where the model needs float64 [246, 3]"),
    (lambda tensors: tensors.__setitem__("floor_blend.weights", tensors["floor_blend.weights"][:-1].clone()),
     "has shape [245, 3] where the model needs float64 [246, 3]"),
], ids=["dtype", "shape"])
def test_one_changed_tensor_of_a_folder_is_named(change, problem, blend_run_dir, audio, tmp_path):
    folder = export_model(blend_run_dir, ExportOptions(out=tmp_path / "model")).folder
    rewrite_weights(folder, change)
    line = one_line_error(run("predict", folder, audio[1]))
    assert f"{folder / 'model.safetensors'}: tensor floor_blend.weights {problem}; " in line


@case("checkpoints", "a checkpoint (best.pt) holding a tensor cast to another dtype",
      "one line naming best.pt and the tensor; nothing predicted")
def test_a_checkpoint_with_a_recast_tensor_is_refused(blend_run_dir, audio, tmp_path):
    checkpoint = load_checkpoint(blend_run_dir)
    checkpoint["model_state"]["floor_blend.intercept"] = checkpoint["model_state"]["floor_blend.intercept"].float()
    save_checkpoint({key: value for key, value in checkpoint.items() if key not in ("format", "format_version")},
                    tmp_path / "best.pt")
    line = one_line_error(run("predict", tmp_path / "best.pt", audio[1]))
    assert f"{tmp_path / 'best.pt'}: tensor floor_blend.intercept is float32 where the model needs float64 [3]" in line


@case("checkpoints", "a model folder whose floor or statistics' standardiser is stored unfitted (alphas or count 0)",
      "one line naming the file and the unfitted part; never the floor's 'never fitted' RuntimeError")
@pytest.mark.parametrize("tensor, part", [("floor_blend.alphas", "floor_blend"),
                                          ("utterance_stats.standardizer.count", "utterance_stats.standardizer")])
def test_a_folder_with_an_unfitted_floor_is_refused_on_loading(tensor, part, blend_run_dir, audio, tmp_path):
    folder = export_model(blend_run_dir, ExportOptions(out=tmp_path / "model")).folder
    rewrite_weights(folder, lambda tensors: tensors[tensor].zero_())
    line = one_line_error(run("predict", folder, audio[1]))
    assert f"{folder / 'model.safetensors'}: its {part} was never fitted" in line
    with pytest.raises(SertoolError, match=f"its {part} was never fitted"):
        _ = open_predictor(folder).model


def _text_files(folder: Path) -> str:
    return "\n".join(path.read_text() for path in folder.iterdir() if path.suffix in (".json", ".md"))


@case("checkpoints", "a model folder exported from a run whose corpus, caches and source lie in the user's folders",
      "no absolute path in any file of the folder; the corpus by name and a digest of the training ids")
def test_an_exported_folder_holds_no_absolute_path(run_dir, corpus, tmp_path):
    cache = tmp_path / "private" / "cache"
    source = tmp_path / "private" / "run"
    checkpoint = load_checkpoint(run_dir)
    checkpoint["config"]["data"]["cache_dir"] = str(cache)
    checkpoint["config"]["data"]["feature_cache"] = str(cache / "frames")
    checkpoint["config"]["train"]["init_from"] = str(tmp_path / "private" / "initial")
    source.mkdir(parents=True)
    save_checkpoint(checkpoint, source / "best.pt")
    folder = export_model(source, ExportOptions(out=tmp_path / "model")).folder
    text = _text_files(folder)
    for private in (str(tmp_path), str(corpus.parent), str(run_dir.parent), "/tmp/"):
        assert private not in text, private
    config = json.loads((folder / "config.json").read_text())
    assert (config["config"]["data"]["cache_dir"], config["config"]["data"]["feature_cache"],
            config["config"]["train"]["init_from"], config["exported_from"]) == ("cache", "frames", "initial", "run")
    # Still the same model: the folder predicts as its source does (the corpus is not needed to predict).
    assert open_predictor(folder).model.state_dict().keys() == open_predictor(source).model.state_dict().keys()


def test_the_card_carries_the_hubs_metadata_and_the_test_scores(run_dir, corpus, tmp_path):
    from huggingface_hub import ModelCard

    scores = tmp_path / "dev-scores.json"
    assert run("evaluate", run_dir, "--corpus", corpus, "--split", "Development", "--scores", scores).exit_code == 0
    document = json.loads(scores.read_text())
    result = run("export", run_dir, "--out", tmp_path / "model", "--license", "cc-by-nc-4.0",
                 "--dataset", "MSP-Podcast", "--scores", scores)
    assert result.exit_code == 0, result.output
    card = ModelCard.load(tmp_path / "model" / "README.md")  # the hub's own parser and model-index reader
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license, data.datasets) == (
        "sertool", "audio-classification", "cc-by-nc-4.0", ["MSP-Podcast"])
    assert "base_model" not in data.to_dict()  # fbank: nothing pretrained
    [*results] = data.eval_results
    assert [(item.dataset_split, item.metric_name, item.metric_value) for item in results] == [
        ("Development", f"CCC {name}", round(document["systems"][0]["ccc"][name], 4))
        for name in ("arousal", "valence", "dominance", "average")]
    assert f"| c | Development | {document['systems'][0]['utterances']} |" in card.text
    unlicensed = export_model(run_dir, ExportOptions(out=tmp_path / "plain")).folder
    assert "license" not in ModelCard.load(unlicensed / "README.md").data.to_dict()
    assert "None was given when this folder was exported" in (unlicensed / "README.md").read_text()
    (tmp_path / "bad.json").write_text(json.dumps({"split": "Test1", "systems": []}))
    with pytest.raises(SertoolError, match="bad.json: not the scores of one model"):
        export_model(run_dir, ExportOptions(out=tmp_path / "other", scores=(str(tmp_path / "bad.json"),)))


def test_the_base_model_is_the_backbones_hub_id_and_a_local_backbone_is_named_not_located():
    from sertool.store.sharing import base_models, portable

    payload = {"pretrained": {"backbone": "microsoft/wavlm-large", "text_model": "/models/roberta-large",
                              "speaker_embedding": None}}
    assert base_models(payload) == ["microsoft/wavlm-large"]
    assert [portable(value) for value in ("microsoft/wavlm-large", "/models/roberta-large", "~/m/x/", "./run",
                                          None)] == ["microsoft/wavlm-large", "roberta-large", "x", "run", None]


def test_the_training_ids_travel_with_the_folder_and_keep_evaluate_off_them(run_dir, corpus, tmp_path):
    folder = export_model(run_dir, ExportOptions(out=tmp_path / "model")).folder
    assert load_model(folder)["training_ids"] == load_checkpoint(run_dir)["training_ids"]
    for model in (run_dir, folder):  # Train: every utterance left out, alike
        result = run("evaluate", model, "--corpus", corpus, "--split", "Train")
        assert result.exit_code == 2 and "trained on" in result.output, result.output
    # A folder exported before the ids had their own file kept them in config.json: still read.
    config = json.loads((folder / "config.json").read_text())
    config["training_ids"] = json.loads((folder / "training_ids.json").read_text())["training_ids"]
    (folder / "config.json").write_text(json.dumps(as_before_digests(config)))  # nor did it record digests
    (folder / "training_ids.json").unlink()
    assert load_model(folder)["training_ids"] == load_checkpoint(run_dir)["training_ids"]
    # Ids of another export are refused, like weights of another export.
    other = export_model(run_dir, ExportOptions(out=tmp_path / "other")).folder
    (folder / "training_ids.json").write_text((other / "training_ids.json").read_text())
    with pytest.raises(SertoolError, match="training_ids.json does not belong to this export"):
        load_model(folder)
