"""What a model folder may say when it leaves the machine it was made on, and how the hub reads it.

A checkpoint records where things sat on its machine: the corpus root, the cache folders, local model
folders, the run folder it was exported from. None of that may travel in a shared folder: a folder uploaded
to the hub would publish the layout of its author's disk. ``portable`` keeps a local path's last component
(the folder's name: what a reader needs to recognise it) and hub ids as they are, and records the training
corpus by name and by a digest of what the model trained on (``training_data_sha256``), which identifies the
data without saying where it was. The training ids themselves stay with the model — they are what keeps
``evaluate`` from scoring a model on its own training data — in a file of their own (``TRAINING_IDS_NAME``).

``card_metadata`` is the model card's YAML block in the hub's conventions: ``library_name``, ``pipeline_tag``,
``license`` (the exporter's), ``base_model`` (the pretrained models the folder builds on), ``datasets`` and a
``model-index`` with the scores the exporter hands over (``sertool evaluate --scores``), each naming its split
and utterance count.
"""
from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sertool.core.config import config_options
from sertool.core.constants import ATTRIBUTES, SCORE_NAMES
from sertool.core.errors import SertoolError
from sertool.core.hub import is_repo_id
from sertool.core.io import load_json
from sertool.store.checkpoints import payload_attributes

TRAINING_IDS_NAME = "training_ids.json"  # a model folder's training ids, beside config.json
LIBRARY_NAME = "sertool"
# The hub has no task for regression from audio; audio classification is where its audio models are listed.
PIPELINE_TAG = "audio-classification"
TASK_NAME = "Speech emotion recognition: {} (CCC)"  # of the model's attributes (all three: arousal, valence, ...)
# The payload's model locations besides the config's: the pretrained models it names, the initial models of
# unknown training data, and the source it was exported from.
_PRETRAINED = ("backbone", "text_model", "speaker_embedding")


def portable(value: str | None) -> str | None:
    """A model or data location as a shared folder may record it: a hub id as it is, a local path by its
    last component (``/home/ana/corpora/MSP-Podcast`` → ``MSP-Podcast``)."""
    if value is None:
        return None
    text = str(value)
    local = text.startswith(("/", "~", ".")) or "\\" in text or Path(text).expanduser().exists()
    return text if is_repo_id(text) and not local else Path(text.rstrip("/\\")).name or text


def training_data_digest(training_ids: Sequence[str]) -> str:
    """The SHA-256 of the sorted, newline-joined training ids: the same data, the same digest, on any disk."""
    return hashlib.sha256("\n".join(sorted(training_ids)).encode()).hexdigest()


def shareable(payload: dict[str, Any], *, exported_from: str) -> tuple[dict[str, Any], list[str]]:
    """``payload`` with every location made ``portable``, and its training ids apart.

    Returns:
        The payload to write into ``config.json`` (its ``data`` gains ``training_data_sha256``; its
        ``training_ids`` are removed) and the training ids, for ``TRAINING_IDS_NAME``.
    """
    shared = copy.deepcopy({key: value for key, value in payload.items() if key != "model_state"})
    config = shared.get("config") or {}
    for option_ in config_options():
        section = config.get(option_.section) if option_.section else config
        if option_.path and isinstance(section, dict) and isinstance(section.get(option_.name), str):
            section[option_.name] = portable(section[option_.name])
    pretrained = shared.get("pretrained") or {}
    for key in _PRETRAINED:
        if isinstance(pretrained.get(key), str):
            pretrained[key] = portable(pretrained[key])
    if "unknown_training_data" in shared:
        shared["unknown_training_data"] = [portable(name) for name in shared["unknown_training_data"]]
    training_ids = list(shared.pop("training_ids", []) or [])
    if isinstance(shared.get("data"), dict):
        shared["data"]["corpus"] = portable(shared["data"].get("corpus"))
        shared["data"]["training_data_sha256"] = training_data_digest(training_ids)
    shared["exported_from"] = portable(exported_from)
    shared["model_state"] = payload.get("model_state", {})
    return shared, training_ids


def base_models(payload: dict[str, Any]) -> list[str]:
    """The hub ids of the pretrained models the folder builds on (backbone, text and speaker models)."""
    pretrained = payload.get("pretrained") or {}
    return [pretrained[key] for key in _PRETRAINED if isinstance(pretrained.get(key), str)
            and is_repo_id(pretrained[key]) and portable(pretrained[key]) == pretrained[key]]


def read_scores(paths: Sequence[str | Path], *, attributes: Sequence[str] = ATTRIBUTES) -> list[dict[str, Any]]:
    """The score rows of ``sertool evaluate --scores`` files, one per file, for the card's ``model-index``: the CCC
    of each of ``attributes`` (the model's: all three, or those of ``train --attributes``) and their average.

    Raises:
        SertoolError: a file that is not a scores document of one system of ``attributes`` (naming it and what to
            do).
    """
    names = (*attributes, "average")
    results = []
    for path in paths:
        document = load_json(path, what="scores document")
        systems = document.get("systems") if isinstance(document, dict) else None
        if not isinstance(systems, list) or len(systems) != 1 or not isinstance(systems[0], dict):
            raise SertoolError(f"--scores {path}: not the scores of one model; write them with `sertool evaluate "
                               "MODEL --corpus ROOT --split SPLIT --scores FILE`")
        row, ccc = systems[0], systems[0].get("ccc")
        if not isinstance(ccc, dict) or not all(isinstance(ccc.get(name), (int, float)) for name in names) \
                or any(name in ccc for name in SCORE_NAMES if name not in names):
            raise SertoolError(f"--scores {path}: not the CCC of {', '.join(names)} (those of this model) alone; "
                               "write it with `sertool evaluate MODEL --scores` of this model")
        results.append({"split": str(document.get("split")), "corpus": portable(document.get("corpus")) or "corpus",
                        "utterances": int(row.get("utterances", 0)), "ccc": {name: float(ccc[name])
                                                                             for name in names}})
    return results


def card_metadata(payload: dict[str, Any], *, name: str, license_id: str | None, datasets: Sequence[str],
                  results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The model card's metadata, as the hub reads it (``huggingface_hub.ModelCardData``)."""
    metadata: dict[str, Any] = {"library_name": LIBRARY_NAME, "pipeline_tag": PIPELINE_TAG}
    if license_id:
        metadata["license"] = license_id
    if base_models(payload):
        metadata["base_model"] = base_models(payload)
    if datasets:
        metadata["datasets"] = list(datasets)
    attributes = payload_attributes(payload, source=name)
    metadata["tags"] = ["speech-emotion-recognition", *attributes, "audio"]
    if results:
        metadata["model-index"] = [{"name": name, "results": [{
            "task": {"type": PIPELINE_TAG, "name": TASK_NAME.format(", ".join(attributes))},
            "dataset": {"name": f"{result['corpus']} ({result['utterances']:,} utterances)",
                        "type": datasets[0] if datasets else result["corpus"], "split": result["split"]},
            "metrics": [{"type": "ccc", "name": f"CCC {score}", "value": round(value, 4)}
                        for score, value in result["ccc"].items()]} for result in results]}]
    return metadata
