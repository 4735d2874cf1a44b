"""Model folders, the way the field shares models: ``config.json`` + ``model.safetensors``.

The authors' released models (``sertool.models.released``) come in this layout: ``config.json`` holds their
wrapper's constructor arguments, ``model.safetensors`` its whole state, which is mapped onto sertool's
names. ``load_model`` returns them as the payload a checkpoint gives, so every command and the predictor
accept them wherever they accept a checkpoint.

Reading a folder never runs code: ``config.json`` is parsed as JSON, the weights are read with
safetensors (tensors only, no pickle), and any other file in the folder is ignored. A hub id
(``owner/name``) is fetched with ``huggingface_hub.snapshot_download``, these files only.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sertool.checkpoint import BEST_NAME, load_checkpoint
from sertool.errors import SertoolError
from sertool.io import load_json
from sertool.models.hub import download_snapshot, is_repo_id

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FOLDER_FILES: tuple[str, ...] = (CONFIG_NAME, WEIGHTS_NAME)


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a ``config.json`` (a model folder, not a run folder)."""
    path = Path(path).expanduser()
    return path.is_dir() and (path / CONFIG_NAME).is_file()


def load_model(name_or_path: str | Path, *, name: str = BEST_NAME) -> dict[str, Any]:
    """The payload of any model source, as ``sertool.checkpoint.load_checkpoint`` returns it.

    Args:
        name_or_path: a checkpoint file, a run folder (its ``name``), a model folder (the authors'
            released layout), or the hub id of a model folder (``owner/name``), tried in that order: a
            local path always wins over a hub id.
        name: the checkpoint of a run folder.

    Returns:
        ``config``, ``label_scaling``, ``pretrained``, ``speakers``, ``model_state``, ``metrics``, ... and
        ``backbone_weights`` (``"published"`` when absent: see ``SERModel``).

    Raises:
        SertoolError: nothing loadable there (naming the path or id and what to do).
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if is_model_folder(path):
        return read_model_folder(path)
    if path.exists() or not is_repo_id(text):
        return load_checkpoint(path, name=name)
    return read_model_folder(download_snapshot(text, files=FOLDER_FILES), source=text)


def read_model_folder(folder: str | Path, *, source: str | None = None) -> dict[str, Any]:
    """Read one of the authors' released models (see the module docstring).

    Args:
        folder: the folder.
        source: how messages name it (default: the folder), e.g. the hub id it was fetched for.

    Raises:
        SertoolError: no ``model.safetensors``, a ``config.json`` of another layout, or weights that do
            not fit the layout.
    """
    folder = Path(folder).expanduser()
    source = source or str(folder)
    data = load_json(folder / CONFIG_NAME, what="model config")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise SertoolError(f"{source}: a model folder without {WEIGHTS_NAME}")
    from sertool.models.released import is_released_config

    if not is_released_config(data):
        raise SertoolError(f"{folder / CONFIG_NAME}: not one of the authors' released models")
    return _released_payload(data, weights, source=source)


def _released_payload(data: dict[str, Any], weights: Path, *, source: str) -> dict[str, Any]:
    """The authors' released model as a payload: their architecture as a sertool config, their weights
    under sertool's names, the whole backbone stored."""
    from sertool.config import Config
    from sertool.data.records import ATTRIBUTES
    from sertool.models.heads import LabelScaling
    from sertool.models.released import convert_released_state, released_arguments, released_model_config

    arguments = released_arguments(data, source=source)
    with _open_safetensors(weights) as handle:
        state, unused = convert_released_state(arguments, handle.keys(), handle.get_tensor, source=source)
    config = Config()
    config.model = released_model_config(arguments)
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

    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
    except (SafetensorError, OSError) as error:
        raise SertoolError(f"{path}: not a readable safetensors file ({str(error).splitlines()[0][:160]})") from None
