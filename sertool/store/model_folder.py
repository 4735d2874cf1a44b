"""Model folders, the way the field shares models: ``config.json``, ``model.safetensors``, ``README.md``.

Two layouts are read, and both come back as the payload a checkpoint gives (``load_model``), so every
command and ``sertool.load`` accept them wherever they accept a checkpoint:

- sertool's own (``sertool export``): ``config.json`` holds the checkpoint's self-description (the
  resolved config, the label scaling, the pretrained model ids, the metrics and where they come from,
  the provenance) and ``model.safetensors`` the weights a checkpoint stores;
- the authors' released models (``sertool.models.released``): ``config.json`` holds their wrapper's
  constructor arguments, ``model.safetensors`` its whole state, mapped onto sertool's names.

Reading a folder never runs code: ``config.json`` is parsed as JSON, the weights are read with
safetensors (tensors only, no pickle), and any other file in the folder is ignored. A hub id
(``owner/name``) is fetched with ``huggingface_hub.snapshot_download``, these three files only.
"""
from __future__ import annotations

import json
import logging
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from sertool.core.constants import MODEL_CONFIG_NAME
from sertool.core.errors import SertoolError
from sertool.core.hub import download_snapshot, is_repo_id
from sertool.core.io import load_json
from sertool.guards.integrity import CONFIG_SHA256, FILES_SHA256, check_file_digests, check_seal, file_digests, seal
from sertool.guards.outputs import OutputPlan
from sertool.guards.reads import MAX_CHECKPOINT_BYTES, check_user_file
from sertool.store.checkpoints import BEST_NAME, CHECKPOINT_ID, WEIGHTS_FILE, load_checkpoint
from sertool.store.sharing import TRAINING_IDS_NAME, training_data_digest

if TYPE_CHECKING:
    from torch import Tensor

FOLDER_FORMAT = "sertool-model"
FOLDER_FORMAT_VERSION = 1
# The format an ONNX model folder's config.json declares (``sertool.store.onnx_folder``): no weights for torch.
ONNX_FORMAT = "sertool-onnx"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FOLDER_FILES: tuple[str, ...] = (MODEL_CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, TRAINING_IDS_NAME)
# What config.json says it is, in the hub's terms (its `architectures` and `model_type` keys).
ARCHITECTURE = "SERModel"
MODEL_TYPE = "sertool"
# Checkpoint keys that stay out of config.json: the weights go to model.safetensors, the training state
# (optimiser, sampler, RNG) of last.pt is of no use to a model shared for inference, and where the weights
# were read from is the loader's note.
_NOT_IN_CONFIG = ("model_state", "training", "format", "format_version", WEIGHTS_FILE)
# Written into both config.json and the safetensors metadata: a folder whose two files come from different
# exports (e.g. a crash while overwriting one with --force) is refused instead of silently mixed.
EXPORT_ID = "export_id"
log = logging.getLogger(__name__)


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a ``config.json`` (a model folder, not a run folder)."""
    path = Path(path).expanduser()
    return path.is_dir() and (path / MODEL_CONFIG_NAME).is_file()


def load_model(name_or_path: str | Path, *, name: str = BEST_NAME, weights: bool = True) -> dict[str, Any]:
    """The payload of any model source, as ``sertool.store.checkpoints.load_checkpoint`` returns it.

    A folder that holds a run's checkpoint ``name`` is a run folder and means that checkpoint, even where an
    export was written into it too; an export there that is not of that checkpoint (a later ``train
    --force`` replaced it) is named in a warning as stale.

    Args:
        name_or_path: a checkpoint file, a run folder (its ``name``), a model folder (sertool's or the
            authors' released layout), or the hub id of a model folder (``owner/name``), tried in that
            order: a local path always wins over a hub id.
        name: the checkpoint of a run folder.
        weights: False leaves the weights of a model folder unread (``model_state`` empty), for callers
            that need its config only.

    Returns:
        ``config``, ``label_scaling``, ``pretrained``, ``speakers``, ``model_state``, ``metrics``, ...,
        ``backbone_weights`` (``"published"`` when absent: see ``SERModel``) and ``weights_file`` (the file
        the weights were read from, as messages name it).

    Raises:
        SertoolError: nothing loadable there (naming the path or id and what to do).
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir() and (path / name).is_file():
        payload = load_checkpoint(path / name)
        if is_model_folder(path):
            _warn_if_stale_export(path, payload, name=name)
        return payload
    if is_model_folder(path):
        return read_model_folder(path, weights=weights)
    if path.exists() or not is_repo_id(text):
        return load_checkpoint(path, name=name)
    return read_model_folder(download_snapshot(text, files=FOLDER_FILES), source=text, weights=weights)


def _warn_if_stale_export(folder: Path, payload: dict[str, Any], *, name: str) -> None:
    """One warning when ``folder`` holds an export (``config.json``) of another checkpoint than its ``name``."""
    try:
        exported = load_json(folder / MODEL_CONFIG_NAME, what="model config")
    except SertoolError:
        exported = None
    recorded = exported.get(CHECKPOINT_ID) if isinstance(exported, dict) else None
    if recorded is None or recorded != payload.get(CHECKPOINT_ID):
        log.warning("warning: %s holds a run's %s and, beside it, an exported model (%s, %s) that is not an export of "
                    "that %s (stale: the run was trained again after the export); using %s. Export the run again, "
                    "or move the old export to a folder of its own", folder, name, MODEL_CONFIG_NAME, WEIGHTS_NAME,
                    name, folder / name)


def read_model_folder(folder: str | Path, *, source: str | None = None, weights: bool = True) -> dict[str, Any]:
    """Read a sertool model folder or one of the authors' released models (see the module docstring).

    Args:
        folder: the folder.
        source: how messages name it (default: the folder), e.g. the hub id it was fetched for.
        weights: False reads ``config.json`` only (``model_state`` empty).

    Raises:
        SertoolError: an ONNX model folder (no weights for torch), no ``model.safetensors``, a ``config.json`` of
            neither layout, a newer format, files
            from different exports, or weights that do not fit the layout.
    """
    folder = Path(folder).expanduser()
    source = source or str(folder)
    data = load_json(folder / MODEL_CONFIG_NAME, what="model config")
    check_seal(data, folder / MODEL_CONFIG_NAME)
    if isinstance(data, dict) and data.get("format") == ONNX_FORMAT:
        raise SertoolError(f"{source}: an ONNX model folder (sertool export --format onnx): evaluate, predict, "
                           "ensemble and sertool.load run it with onnxruntime, but it holds no weights to build a "
                           "torch model from; give the run folder or its safetensors export instead")
    weights_file = folder / WEIGHTS_NAME
    if not weights_file.is_file():
        raise SertoolError(f"{source}: a model folder without {WEIGHTS_NAME}; export it again (sertool export)")
    from sertool.models.released import is_released_config

    if is_released_config(data):
        return {**_released_payload(data, weights_file if weights else None, source=source),
                WEIGHTS_FILE: f"{source}/{WEIGHTS_NAME}"}
    if not isinstance(data, dict) or data.get("format") != FOLDER_FORMAT:
        raise SertoolError(f"{folder / MODEL_CONFIG_NAME}: neither a sertool model folder (sertool export) nor one of "
                           "the authors' released models")
    if data.get("format_version", 0) > FOLDER_FORMAT_VERSION:
        raise SertoolError(f"{source}: written by a newer sertool (format {data['format_version']}); upgrade sertool")
    if weights:
        check_file_digests(folder, data, source=source)
    with _open_safetensors(weights_file) as handle:
        if (handle.metadata() or {}).get(EXPORT_ID) != data.get(EXPORT_ID):
            raise SertoolError(f"{source}: {MODEL_CONFIG_NAME} and {WEIGHTS_NAME} come from different exports (an "
                               "interrupted overwrite?); export the model again")
        state = {name: handle.get_tensor(name) for name in handle.keys()} if weights else {}
    payload = undescribed(data)
    training_ids = read_training_ids(folder, data, source=source)
    if training_ids is not None:  # folders exported before it kept the ids in config.json
        payload["training_ids"] = training_ids
    payload["model_state"] = state
    payload[WEIGHTS_FILE] = f"{source}/{WEIGHTS_NAME}"
    return payload


def write_model_folder(payload: dict[str, Any], outputs: OutputPlan, folder: Path, *, card: str,
                       training_ids: list[str]) -> list[Path]:
    """Write ``payload`` (a checkpoint's, made ``sharing.shareable``) as a sertool model folder; other files in
    ``folder`` stay.

    Each file is committed through ``outputs`` (atomically, exclusively unless ``--force``) while the folder is
    held (``OutputPlan.holding``); ``config.json`` and the weights share an export id, so a folder left
    half-overwritten by a crash is refused on loading rather than read with mismatched files.

    Args:
        payload: what ``load_model`` returned (weights in ``model_state``).
        outputs: the command's outputs, in which ``folder`` is declared.
        folder: created if missing.
        card: the README.md text (the model card).
        training_ids: the utterances the model trained on, written to ``TRAINING_IDS_NAME``.

    Returns:
        The files written.

    Raises:
        SertoolError: a file cannot be written (naming it).
    """
    from safetensors.torch import save as save_safetensors

    export_id = uuid.uuid4().hex
    # safetensors stores each tensor alone: contiguous copies, so views and shared storage cannot clash.
    tensors = {name: value.detach().cpu().contiguous().clone() for name, value in payload["model_state"].items()}
    written = [folder / WEIGHTS_NAME, folder / CARD_NAME, folder / TRAINING_IDS_NAME, folder / MODEL_CONFIG_NAME]
    with outputs.holding(folder, flag="--out"):
        outputs.write_data(written[0], save_safetensors(tensors, metadata={EXPORT_ID: export_id, "format": "pt"}))
        with outputs.writing(written[1]) as handle:
            handle.write(card)
        write_training_ids(outputs, written[2], export_id=export_id, training_ids=training_ids)
        # Last, sealed, with the digest of the weights as written: a folder damaged later is refused on loading.
        config = seal({"format": FOLDER_FORMAT, "format_version": FOLDER_FORMAT_VERSION, EXPORT_ID: export_id,
                       **described(payload), FILES_SHA256: file_digests(written[:1])})
        with outputs.writing(written[3]) as handle:
            json.dump(config, handle, indent=2)
            handle.write("\n")
    return written


def described(payload: dict[str, Any]) -> dict[str, Any]:
    """What a model folder's ``config.json`` holds of a (``sharing.shareable``) payload besides its format and export
    id: what the hub reads it as, and the checkpoint's self-description without the weights, the training state
    and where they were read from (also an ONNX folder's: ``sertool.store.onnx_folder``)."""
    return {"architectures": [ARCHITECTURE], "model_type": MODEL_TYPE,
            **{key: value for key, value in payload.items() if key not in _NOT_IN_CONFIG}}


def undescribed(data: dict[str, Any]) -> dict[str, Any]:
    """A folder's ``config.json`` as a payload: without its export id, its integrity checks and the hub's keys
    (``described``'s inverse)."""
    return {key: value for key, value in data.items()
            if key not in (EXPORT_ID, FILES_SHA256, CONFIG_SHA256, "architectures", "model_type")}


def write_training_ids(outputs: OutputPlan, path: Path, *, export_id: str, training_ids: list[str]) -> None:
    """Commit a folder's ``TRAINING_IDS_NAME`` (declared in ``outputs``), with the export id of its ``config.json``."""
    with outputs.writing(path) as handle:
        # The export id ties the ids to config.json, as it ties the weights (read_training_ids checks both).
        json.dump({EXPORT_ID: export_id, "training_ids": list(training_ids)}, handle, indent=0)
        handle.write("\n")


def read_training_ids(folder: Path, data: dict[str, Any], *, source: str) -> list[str] | None:
    """The ids of a folder's ``TRAINING_IDS_NAME``, checked against what its ``config.json`` (``data``) records of
    them; None where the folder has none and records none (folders exported before it kept the ids in
    ``config.json``).

    Raises:
        SertoolError: the file is missing where ``config.json`` records a digest of the ids, holds ids of another
            export, not a list of ids, or ids whose digest is not the recorded one (scoring would then not know
            which utterances the model trained on).
    """
    recorded = (data.get("data") or {}).get("training_data_sha256") if isinstance(data.get("data"), dict) else None
    if not (folder / TRAINING_IDS_NAME).is_file():
        if recorded is not None:
            raise SertoolError(f"{source}: {TRAINING_IDS_NAME} is missing, and without it no score can tell held-out "
                               "utterances from training ones; copy the whole folder, or export the model again")
        return None
    ids = load_json(folder / TRAINING_IDS_NAME, what="training ids")
    if not isinstance(ids, dict) or ids.get(EXPORT_ID) != data.get(EXPORT_ID) or not isinstance(
            ids.get("training_ids"), list):
        raise SertoolError(f"{source}: {TRAINING_IDS_NAME} does not belong to this export of {MODEL_CONFIG_NAME} "
                           "(an interrupted overwrite?); export the model again")
    training_ids = [str(item) for item in ids["training_ids"]]
    if recorded is not None and training_data_digest(training_ids) != recorded:
        raise SertoolError(f"{folder / TRAINING_IDS_NAME}: not the training ids {MODEL_CONFIG_NAME} records (their "
                           "SHA-256 differs): the file changed after export; download or export the model again")
    return training_ids


def _released_payload(data: dict[str, Any], weights: Path | None, *, source: str) -> dict[str, Any]:
    """The authors' released model as a payload: their architecture as a sertool config, their weights
    (unless ``weights`` is None) under sertool's names, the whole backbone stored."""
    from sertool.core.config import Config
    from sertool.data.records import ATTRIBUTES
    from sertool.models.heads import LabelScaling
    from sertool.models.released import (
        RELEASED_INPUT_S,
        convert_released_state,
        released_arguments,
        released_model_config,
    )

    arguments = released_arguments(data, source=source)
    state: dict[str, Tensor] = {}
    unused: list[str] = []
    if weights is not None:
        with _open_safetensors(weights) as handle:
            state, unused = convert_released_state(arguments, handle.keys(), handle.get_tensor, source=source)
    config = Config()
    config.model = released_model_config(arguments)
    config.data.max_duration_s = RELEASED_INPUT_S  # the clip length they were made for (predict's window)
    return {
        "config": config.to_dict(),
        "label_scaling": LabelScaling().to_dict(),
        "attributes": list(ATTRIBUTES),
        "pretrained": {"backbone": config.model.backbone_path, "text_model": None, "speaker_embedding": None},
        "speakers": [],
        "model_state": state,
        "backbone_weights": "stored",
        "metrics": {},
        "released": {"source": source, "arguments": arguments, "unused_weights": unused},
    }


@contextmanager
def _open_safetensors(path: Path) -> Iterator[Any]:
    """``safetensors.safe_open`` with a one-line error for a damaged file (tensors are read lazily)."""
    from safetensors import SafetensorError, safe_open

    check_user_file(path, what="safetensors file", max_bytes=MAX_CHECKPOINT_BYTES)
    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
    except (SafetensorError, OSError) as error:
        raise SertoolError(f"{path}: not a readable safetensors file ({str(error).splitlines()[0][:160]})") from None
