"""`sertool export`: a trained model as a self-contained model folder, and its model card.

The folder (``sertool.store.model_folder``) holds ``config.json`` (the checkpoint's self-description: config,
label scaling, the backbone id it needs, metrics and the data they were measured on, provenance; every local
path reduced to its name, ``sertool.store.sharing``), ``model.safetensors`` (the weights, no pickle),
``training_ids.json`` (what it trained on, so that no one scores it there) and ``README.md`` (the model card
written here, with the hub's metadata). Every
command and ``sertool.load`` read it like the run folder it came from, with the same predictions. With
``--format onnx`` the weights are an ONNX graph instead (``sertool.store.onnx_export``, ``onnx_folder``),
which every command runs with onnxruntime.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sertool.core.constants import ATTRIBUTES
from sertool.core.errors import SertoolError
from sertool.core.hub import is_repo_id
from sertool.guards.outputs import OutputPlan
from sertool.store.checkpoints import payload_attributes
from sertool.store.model_folder import FOLDER_FILES, load_model, write_model_folder
from sertool.store.onnx_folder import (
    GRAPH_NAME,
    ONNX_FOLDER_FILES,
    import_onnx,
    import_onnxruntime,
    write_onnx_folder,
)
from sertool.store.options import EXPORT_ONNX, ExportOptions
from sertool.store.sharing import TRAINING_IDS_NAME, card_metadata, portable, read_scores, shareable

SAFETENSORS_CONTENTS = "`model.safetensors` holds its weights (no pickle)"


@dataclass
class ExportResult:
    """What ``export_model`` wrote, and where it uploaded the folder (with ``push_to_hub``)."""

    folder: Path
    written: list[Path] = field(default_factory=list)
    url: str | None = None


def export_model(source: str | Path, options: ExportOptions) -> ExportResult:
    """Write ``source`` as a model folder ``options.out``, and upload it to the hub as ``options.push_to_hub``.

    Args:
        source: a run folder (its ``best.pt``), a checkpoint, a model folder or a hub id.
        options: ``out``, the folder to write (created; other files in it are left alone); ``force``, overwrite
            the model files an earlier export left there; ``push_to_hub``, a model repository id
            (``owner/name``) to create (if needed) and upload to; ``license``, ``datasets`` and ``scores``
            (``evaluate --scores`` files) for the card's metadata (``sharing.card_metadata``); ``file_format``, the
            weights as safetensors or as an ONNX graph (which ``backbone_path`` and ``text_model`` help build on
            this machine).

    Returns:
        The files written and, after an upload, the repository's URL.

    Raises:
        SertoolError: nothing loadable at ``source``, a ``scores`` file that is not one model's scores,
            model files already in ``out`` without ``force``,
            no hub token for ``push_to_hub`` (checked before anything is written), an ONNX export that is refused
            (``sertool.store.onnx_export``), or a failed upload (the folder is complete then; the message says how
            to upload it later).
    """
    push_to_hub = options.push_to_hub
    as_onnx = options.file_format == EXPORT_ONNX
    if not as_onnx and (options.backbone_path is not None or options.text_model is not None):
        raise SertoolError("--backbone-path and --text-model apply to --format onnx only (a safetensors export does "
                           "not run the model); drop them, or add --format onnx")
    outputs = OutputPlan(force=options.force)
    out = outputs.folder(options.out, flag="--out")
    for name in ONNX_FOLDER_FILES if as_onnx else FOLDER_FILES:
        outputs.file(out / name, flag="--out")
    if as_onnx:  # before the work: the model is built, traced and checked with them
        import_onnx(needed_for="sertool export --format onnx")
        import_onnxruntime(needed_for="sertool export --format onnx")
    if push_to_hub is not None:
        _check_can_push(push_to_hub)
    payload = load_model(source)
    results = read_scores(options.scores, attributes=payload_attributes(payload, source=str(source)))
    shared, training_ids = shareable(payload, exported_from=str(source))
    metadata = card_metadata(shared, name=out.name, license_id=options.license, datasets=options.datasets,
                             results=results)
    if as_onnx:
        written = _write_onnx(payload, shared, options, outputs, out, metadata=metadata, results=results,
                              training_ids=training_ids, source=str(source))
    else:
        card = model_card(shared, name=out.name, metadata=metadata, results=results)
        written = write_model_folder(shared, outputs, out, card=card, training_ids=training_ids)
    result = ExportResult(out, written)
    if push_to_hub is not None:
        result.url = _push(out, push_to_hub, [path.name for path in written])
    return result


def _write_onnx(payload: dict[str, Any], shared: dict[str, Any], options: ExportOptions, outputs: OutputPlan,
                out: Path, *, metadata: dict[str, Any], results: Sequence[dict[str, Any]], training_ids: list[str],
                source: str) -> list[Path]:
    """The ONNX folder of ``payload``: its model built with this machine's pretrained model locations, traced,
    checked, and written with ``shared``'s description (``sharing.shareable``) and its card."""
    from sertool.core.config import Config
    from sertool.models.heads import LabelScaling
    from sertool.store.onnx_export import onnx_card_lines, onnx_graph

    config = Config.from_dict(payload["config"], source=f"{source} (its config)")
    overrides = {key: getattr(options, key) for key in ("backbone_path", "text_model")
                 if getattr(options, key) is not None}
    graph, spec = onnx_graph({**payload, "exported_from": source}, dataclasses.replace(config.model, **overrides),
                             text_model=portable(config.model.text_model))
    scaling = LabelScaling.from_dict(payload.get("label_scaling") or LabelScaling().to_dict())
    card = model_card(shared, name=out.name, metadata=metadata, results=results,
                      contents=f"`{GRAPH_NAME}` holds it as one ONNX graph (no pickle)")
    lines = onnx_card_lines(spec, scaling, attributes=payload_attributes(payload, source=source))
    return write_onnx_folder(shared, graph, spec, outputs, out, card=card + "\n" + "\n".join(lines) + "\n",
                             training_ids=training_ids)


def model_card(payload: dict[str, Any], *, name: str, metadata: dict[str, Any],
               results: Sequence[dict[str, Any]] = (), contents: str = SAFETENSORS_CONTENTS) -> str:
    """The README.md of a model folder: the hub's metadata block (``metadata``), what it predicts, how to run
    it, the data, the metrics with their split and utterance count (the validation split's, and the
    ``results`` of ``sharing.read_scores``), intended use and limits, license, provenance. ``contents`` says
    where the weights are."""
    model = payload["config"]["model"]
    data = payload.get("data") or {}
    released = payload.get("released")
    backbone = payload.get("pretrained", {}).get("backbone") or model["backbone"]
    attributes = payload_attributes(payload, source=name)
    words = " and ".join(filter(None, (", ".join(attributes[:-1]), attributes[-1])))
    lines = [
        "---", yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# {name}: {words} from speech",
        "",
        f"Predicts the perceived **{words}**{' (A/V/D)' if len(attributes) == len(ATTRIBUTES) else ''} of an "
        "utterance on the 1–7 rater scale "
        "of MSP-Podcast (rater means; 4 is the middle), from 16 kHz speech (any rate and channel count is "
        "resampled and downmixed). A sertool model folder (`sertool export`): "
        f"`config.json` describes the model, {contents}, this card.",
        "",
        "## Use",
        "",
        "```bash",
        f"sertool predict {name} talk.wav recordings/ --out predictions.csv   # long files are cut into windows",
        f"sertool evaluate {name} --corpus /data/MSP-Podcast --split Test1",
        "```",
        "",
        "```python",
        "import sertool",
        f'model = sertool.load("{name}")             # or sertool.Model.from_pretrained("owner/{name}")',
        'model.predict("talk.wav")   # {' + ", ".join(f'"{attribute}": ...' for attribute in attributes) + "}",
        'model.predict(waveform, sample_rate=16000, scale="unit")   # a numpy array; the 0..1 outputs',
        "```",
        "",
        "## Model",
        "",
        *_model_lines(payload, model, backbone),
        "",
        "## Training data",
        "",
        *_data_lines(payload, data, released),
        "",
        "## Metrics",
        "",
        *_metric_lines(payload, data),
        *_result_lines(results),
        "",
        "## Intended use",
        "",
        "Research on dimensional emotion in speech: describing how speech is perceived (by the raters of the "
        "training corpus) on arousal, valence and dominance, comparing systems, analysing corpora. Best on "
        "speech like the training data.",
        "",
        "## Limits",
        "",
        "- It predicts how raters perceive speech, averaged over raters — not what a speaker feels. Do not use it "
        "for decisions about individuals (hiring, health, security, surveillance).",
        "- It learnt from one corpus (above): other languages, recording conditions, acted speech, children's "
        "speech and very short clips (under about 3 s) can be predicted far less reliably; measure before "
        "relying on it.",
        "- Long audio is cut into windows (`sertool predict --window-s`; default: the clip length the model was "
        "made for), each predicted alone; the file's value is their duration-weighted mean.",
        *([f"- The Whisper encoder here takes clips of at most {model['whisper_window_s']:g} s."]
          if model.get("whisper_window_s") else []),
        *(["- It reads transcripts too (an MM model): without them, sertool transcribes with Whisper ASR, whose "
           "errors carry over."] if model.get("text") else []),
        "",
        "## License",
        "",
        f"`{metadata['license']}`, as given by whoever exported it." if metadata.get("license") else
        "None was given when this folder was exported (`sertool export --license`); ask its author, and mind the "
        "terms of the training corpus.",
        "",
        "## Provenance",
        "",
        *_provenance_lines(payload),
        "",
    ]
    return "\n".join(lines)


def _model_lines(payload: dict[str, Any], model: dict[str, Any], backbone: str) -> list[str]:
    weights = payload.get("backbone_weights", "published")
    scaling = payload.get("label_scaling", {"minimum": 1.0, "maximum": 7.0})
    if model["backbone"] == "fbank":
        where = "sertool's built-in log-mel encoder, trained from scratch: every weight of it is in this folder."
    elif weights == "stored":
        where = "every weight of it is in this folder; only its config is read from that id (or `--backbone-path DIR`)."
    else:
        where = "its frozen weights are the published ones, loaded from that id (or `--backbone-path DIR`)."
    lines = [
        f"- Speech backbone: `{backbone}` ({model['backbone']}, layers: {model['layer_weighting']}); {where}",
        f"- Frame projection: {model['projection_dim'] or 'none'}; pooling: {model['pooling']}; heads: one "
        f"per attribute, hidden width {model['head_hidden_dim']}, {model['head_output']} output.",
    ]
    if model.get("text"):
        lines.append(f"- Text branch (MM): `{model['text_model']}` embeds the transcript.")
    if model.get("speaker_embedding"):
        lines.append(f"- Speaker embedding: `{model['speaker_embedding']}`.")
    if model.get("aux"):
        lines.append(f"- Auxiliary heads: {', '.join(model['aux'])}.")
    lines.append(f"- Output scale: unit-scale outputs u map to ratings as {scaling['minimum']:g} + "
                 f"{scaling['maximum'] - scaling['minimum']:g}·u.")
    return lines


def _data_lines(payload: dict[str, Any], data: dict[str, Any], released: dict[str, Any] | None) -> list[str]:
    if released is not None:
        return [f"The authors' released model `{released['source']}` (MSP-Podcast, trained by the authors; see "
                "their model card). sertool maps its sigmoid outputs to 1–7 as 1 + 6·y: an inferred mapping, not "
                "documented by the authors."]
    if not data:
        return ["Not recorded in the checkpoint this folder was exported from."]
    config = payload["config"]["data"]
    digest = data.get("training_data_sha256")
    return [
        f"- Corpus: `{data['corpus']}`" + (f" (training utterances' SHA-256, `{TRAINING_IDS_NAME}`: `{digest[:16]}…`)."
                                          if digest else "."),
        f"- Trained on split {data['train_split']}: {data['train_utterances']:,} utterances "
        f"(O/X of the training split: {config['train_ox']}; O/X of {data['valid_split']} added to training: "
        f"{'yes' if config['dev_ox_to_train'] else 'no'}).",
        f"- Model selection on split {data['valid_split']}: {data['valid_utterances']:,} utterances.",
        f"- Selection: {data['selection']}.",
    ]


def _metric_lines(payload: dict[str, Any], data: dict[str, Any]) -> list[str]:
    metrics = payload.get("metrics") or {}
    names = (*payload_attributes(payload, source="the model"), "average")  # the average of its own attributes
    if not all(name in metrics for name in names) or not data:
        return ["No metrics recorded with this model: evaluate it on a labelled split it never saw "
                "(`sertool evaluate`)."]
    step = payload.get("step")
    return [
        "Concordance correlation coefficient (CCC) over the whole split, on the 1–7 scale:",
        "",
        "| split | utterances | " + " | ".join(names) + " |",
        "|---" * (len(names) + 2) + "|",
        f"| {data['valid_split']} | {data['valid_utterances']:,} | "
        + " | ".join(f"{metrics[name]:.4f}" for name in names) + " |",
        "",
        f"Measured at step {step} on the validation split, the split this checkpoint was *selected* on (best "
        "average CCC), so it is optimistic for that split; for a number to report, evaluate on a test split "
        "the model never saw.",
    ]


def _result_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    if not results:
        return []
    names = list(results[0]["ccc"])  # the model's attributes and their average (``sharing.read_scores``)
    return ["", "Scored on data it never trained on (`sertool evaluate`, utterances it trained on left out):", "",
            "| corpus | split | utterances | " + " | ".join(names) + " |", "|---" * (len(names) + 3) + "|",
            *(f"| {result['corpus']} | {result['split']} | {result['utterances']:,} | "
              + " | ".join(f"{result['ccc'][name]:.4f}" for name in names) + " |" for result in results)]


def _provenance_lines(payload: dict[str, Any]) -> list[str]:
    provenance = payload.get("provenance") or {}
    lines = [f"- Exported from `{payload.get('exported_from')}`."]
    if provenance:
        lines.append(f"- sertool {provenance.get('sertool_version')}, code revision "
                     f"{provenance.get('code_revision') or 'unknown'}, torch {provenance.get('torch_version')}.")
    if payload.get("epoch") is not None:
        lines.append(f"- Written after epoch {payload['epoch']}, step {payload.get('step')}.")
    return lines


def _check_can_push(repo_id: str) -> None:
    """Before any work: a valid repository id and a token to upload with.

    Raises:
        SertoolError: naming ``--push-to-hub`` and what to do.
    """
    from huggingface_hub import get_token

    if not is_repo_id(repo_id):
        raise SertoolError(f"--push-to-hub {repo_id}: give a model repository id, owner/name")
    if get_token() is None:
        raise SertoolError("--push-to-hub: no model-hub token on this machine; run `hf auth login` (or set "
                           "HF_TOKEN) and export again")


def _push(folder: Path, repo_id: str, files: list[str]) -> str:
    """Create ``repo_id`` if needed and upload the folder's model ``files``; the repository's URL.

    Raises:
        SertoolError: any failure of the upload, in one line that says what to do (``_push_failure``).
    """
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="model", exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          allow_patterns=files, commit_message="sertool export")
    except Exception as error:  # noqa: BLE001 - every failure of the hub client: the folder is complete anyway
        raise SertoolError(f"--push-to-hub {repo_id}: {_push_failure(error, repo_id)}; {folder} is complete: "
                           f"upload it later with `hf upload {repo_id} {folder}`") from None
    return str(url)


def _push_failure(error: Exception, repo_id: str) -> str:
    """What went wrong with an upload to ``repo_id`` and what to do, from the hub client's ``error``.

    By kind: no token; the hub's answer (401: the token is refused; 403: it may not write there; 404: no such
    owner or repository; others: the hub's trouble); no answer at all (no network, a time-out, offline mode).
    The transport's errors are recognised as the base classes of huggingface_hub's own HTTP error, whatever
    HTTP library this huggingface_hub uses.
    """
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    if isinstance(error, LocalTokenNotFoundError):
        return "no model-hub token on this machine; run `hf auth login` (or set HF_TOKEN)"
    if isinstance(error, HfHubHTTPError):
        response = getattr(error, "response", None)
        status = getattr(response, "status_code", None)
        if status == 401:
            return ("the hub refused the token (401: invalid or expired); run `hf auth login` with a valid token "
                    "(or set HF_TOKEN)")
        if status == 403:
            return (f"the token may not write to {repo_id} (403); use a token with write access to that owner "
                    "(`hf auth whoami` shows the token's user and organisations) or push to a repository of yours")
        if status == 404:
            return (f"{repo_id} was not found (404: no such owner, or a repository the token cannot see); check "
                    "the owner's name (`hf auth whoami`)")
        return f"the hub answered {status or 'with an error'} ({_first_line(error)}); try again later"
    transport = tuple(base for base in HfHubHTTPError.__mro__[1:] if not issubclass(OSError, base))
    if isinstance(error, (*transport, ConnectionError, TimeoutError)):
        return (f"the model hub cannot be reached ({type(error).__name__}: {_first_line(error)}); check the "
                "network (and that HF_HUB_OFFLINE is not set)")
    return f"upload failed ({type(error).__name__}: {_first_line(error)})"


def _first_line(error: BaseException) -> str:
    """The error's first non-empty line, at most 200 characters (the hub's messages run to several lines)."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)[:200]
