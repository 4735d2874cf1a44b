"""Self-describing, safely loaded checkpoints.

A checkpoint is a plain dict saved with ``torch.save`` and read back with ``weights_only=True``: only
tensors and plain containers, so a checkpoint from a stranger can never run code. It carries everything
needed to rebuild and trust the model: the resolved config, the label scaling, the pretrained model ids
and revisions, the speaker list, the sertool version and code revision, and the metrics it was kept for.

Frozen pretrained weights (a frozen Whisper encoder, the CNN front end of a fine-tuned WavLM, a frozen
text encoder) are *not* stored: they equal the published weights, which are loaded again from the hub id
or folder recorded here (``--backbone-path`` on load points elsewhere). This keeps an MMWhisper
checkpoint at a few MB instead of 2.5 GB.
"""
from __future__ import annotations

import functools
import io
import os
import pickle
import re
import subprocess
import uuid
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sertool.core.constants import ATTRIBUTES, BEST_NAME, attribute_subset
from sertool.core.constants import LAST_NAME as LAST_NAME  # the training loop's name for it, from here
from sertool.core.errors import SertoolError
from sertool.core.hub import CLI_SPELLING, OptionSpelling
from sertool.core.version import __version__
from sertool.guards.integrity import check_archive
from sertool.guards.outputs import atomic_write
from sertool.guards.reads import MAX_CHECKPOINT_BYTES, check_user_file, open_user_file

if TYPE_CHECKING:
    from sertool.core.config import ModelConfig
    from sertool.models.ser_model import SERModel

FORMAT = "sertool-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_ID = "checkpoint_id"  # a random id per saved checkpoint; an export records the one it came from
# Top-level modules of SERModel holding pretrained encoders whose frozen weights are not stored.
PRETRAINED_MODULES: tuple[str, ...] = ("backbone", "text_encoder", "speaker_embedder")
# The payload key that names the file the weights were read from (set on loading, never saved): what
# messages about the weights name.
WEIGHTS_FILE = "weights_file"


def resolve_checkpoint(path: str | Path, *, name: str = BEST_NAME) -> Path:
    """A checkpoint file, or ``path/name`` when ``path`` is a run folder.

    Raises:
        SertoolError: neither exists, or it is not a regular file of a checkpoint's size (a pipe, a device).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        if not os.path.lexists(path / name):
            raise SertoolError(f"{path}: a folder without {name}; is it a finished run folder of `sertool train`?")
        path = path / name
    elif not os.path.lexists(path):
        raise SertoolError(f"{path}: no such checkpoint file or run folder")
    return check_user_file(path, what="checkpoint", max_bytes=MAX_CHECKPOINT_BYTES)


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` into its run folder atomically (temp file + rename), replacing the previous one of that
    name: a crash never leaves a half-written checkpoint."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload, CHECKPOINT_ID: uuid.uuid4().hex},
               buffer)
    with atomic_write(path, "wb", replace=True) as handle:
        handle.write(buffer.getbuffer())


def load_checkpoint(path: str | Path, *, name: str = BEST_NAME) -> dict[str, Any]:
    """Read a checkpoint (or a run folder's ``name``) without executing anything in it.

    Raises:
        SertoolError: not a file, not a zip archive (an empty file, audio, text), a member that differs from
            its checksum (damage), not a readable or not a sertool checkpoint, or a file that holds anything but
            tensors and plain data (a pickle payload is refused, never run).
    """
    path = resolve_checkpoint(path, name=name)
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; torch.load fails on others unpredictably
        raise SertoolError(f"{path}: not a readable checkpoint ({_describe(path)}, not the zip archive torch.save "
                           "writes); give a run folder or its best.pt")
    check_archive(path, what="checkpoint")  # torch.load reads a flipped byte inside a tensor without noticing
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # Either way nothing in the file ran: the weights-only unpickler stops at the first unknown item.
        offender = re.search(r"GLOBAL (\S+)", str(error))
        if offender is None:
            raise SertoolError(f"{path}: not a readable checkpoint (damaged, or not a weights-only file)") from None
        raise SertoolError(
            f"{path}: refused: the file holds Python objects other than tensors and plain data (it references "
            f"{offender.group(1)}), which could run code when loaded; sertool never loads such files"
        ) from None
    except Exception as error:  # noqa: BLE001 - a damaged archive fails anywhere in the loader (IndexError, ...)
        reason = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise SertoolError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SertoolError(f"{path}: not a sertool checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise SertoolError(f"{path}: written by a newer sertool (format {payload['format_version']}); upgrade sertool")
    payload[WEIGHTS_FILE] = str(path)
    return payload


def _describe(path: Path) -> str:
    """What a file that is not a zip archive looks like, for the error message."""
    with open_user_file(path, "rb", what="checkpoint", max_bytes=MAX_CHECKPOINT_BYTES) as handle:
        head = handle.read(4096)
    if not head:
        return "an empty file"
    if head[:4] in (b"RIFF", b"fLaC", b"OggS", b"ID3\x03", b"ID3\x04"):
        return "an audio file"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return f"{path.stat().st_size:,} bytes that are not a torch.save archive"


def payload_attributes(payload: dict[str, Any], *, source: str) -> tuple[str, ...]:
    """The attributes the model of ``payload`` (a checkpoint's, a model folder's) predicts, in ``ATTRIBUTES``
    order: its ``attributes`` (``train.attributes``), or all three where it records none (a checkpoint older than
    systems of fewer attributes).

    Raises:
        SertoolError: ``attributes`` is not a list of attribute names, each once (naming ``source``).
    """
    recorded = payload.get("attributes", ATTRIBUTES)
    try:
        if not isinstance(recorded, (list, tuple)):
            raise ValueError(f"{recorded!r} is not a list")
        return attribute_subset(recorded)
    except ValueError as error:
        raise SertoolError(f"{source}: a damaged sertool checkpoint: its attributes: {error}") from None


def build_model(payload: dict[str, Any], model_config: ModelConfig, *, spelling: OptionSpelling = CLI_SPELLING,
                source: str) -> SERModel:
    """The ``SERModel`` a checkpoint's ``payload`` describes (its attributes too), with its stored weights, on the
    CPU.

    Args:
        payload: what ``sertool.store.model_folder.load_model`` returned.
        model_config: the ``ModelConfig`` to build (the payload's, with the caller's pretrained model
            locations: frozen published weights are loaded from there).
        spelling: how the caller names those locations, in the messages when one cannot be loaded.
        source: how messages name the payload.

    Raises:
        SertoolError: a pretrained model that cannot be loaded, damaged attributes, or stored weights that do not
            fit the model (``load_stored_state``).
    """
    from sertool.models.ser_model import SERModel

    model = SERModel(model_config, num_speakers=len(payload.get("speakers", [])),
                     backbone_weights=payload.get("backbone_weights", "published"), spelling=spelling,
                     attributes=payload_attributes(payload, source=source))
    load_stored_state(model, payload["model_state"], source=payload[WEIGHTS_FILE])
    return model


def stored_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without the frozen weights of its pretrained encoders (see the module doc)."""
    frozen = frozen_pretrained_keys(model)
    return {key: value for key, value in model.state_dict().items() if key not in frozen}


def load_stored_state(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load a ``stored_state`` into a freshly built model; exactly the frozen pretrained keys may be absent.

    Every path that loads stored weights into a model comes here (a checkpoint, a model folder, a resumed
    run; ``--init-from`` shares the checks): each tensor must have the dtype and shape of the model's own
    (``check_stored_tensors``), and what the model fits before training must be fitted (``check_fitted``).

    Args:
        source: the file the weights come from, as messages name it.

    Raises:
        SertoolError: the checkpoint does not fit the model (another architecture or config, a tensor of
            another dtype or shape), or leaves a fitted part unfitted; one line naming the first offender.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state) - frozen_pretrained_keys(model))
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        details = [f"missing {', '.join(missing[:3])}" if missing else "",
                   f"unexpected {', '.join(unexpected[:3])}" if unexpected else ""]
        raise SertoolError(f"{source}: the weights do not fit the model its config describes "
                           f"({'; '.join(d for d in details if d)})")
    check_stored_tensors(state, expected, source=source)
    model.load_state_dict(state, strict=False)
    check_fitted(model, source=source)


def check_stored_tensors(state: dict[str, Any], expected: dict[str, torch.Tensor], *, source: str,
                         shapes: bool = True) -> None:
    """Refuse stored weights unless each of them that the model has is a tensor of the model's dtype (and,
    with ``shapes``, shape).

    ``load_state_dict`` would copy a float16 tensor into a float32 weight, or a float64 one into float16,
    without a word: weights that went through another dtype are not the ones that were trained and scored.
    A stored file never holds another dtype than the model it was written from; one that does was changed.

    Args:
        state: the stored weights by name.
        expected: the freshly built model's ``state_dict()``.
        source: the file the weights come from, as messages name it.
        shapes: False leaves shapes to the caller (``--init-from`` names the flags that change them).

    Raises:
        SertoolError: naming ``source`` and the first tensor that does not fit, e.g. "m/model.safetensors:
            tensor floor_blend.weights is float16 where the model needs float64 [NUM_FEATURES, 3]; ..." (the
            statistics' count, ``sertool.models.utterance_stats.NUM_FEATURES``, in the message itself).
    """
    for key, value in state.items():
        if key not in expected:
            continue
        needed = expected[key]
        needs = f"{_dtype_name(needed.dtype)} {list(needed.shape)}"
        if not isinstance(value, torch.Tensor):
            problem = f"{key} is a {type(value).__name__}, not a tensor, where the model needs {needs}"
        elif value.dtype != needed.dtype:
            problem = f"tensor {key} is {_dtype_name(value.dtype)} where the model needs {needs}"
        elif shapes and value.shape != needed.shape:
            problem = f"tensor {key} has shape {list(value.shape)} where the model needs {needs}"
        else:
            continue
        raise SertoolError(f"{source}: {problem}; the file was changed or damaged since it was written: export the "
                           "model again (sertool export), or fetch it again")


def check_fitted(model: nn.Module, *, source: str) -> None:
    """Refuse a loaded model one of whose fitted parts was never fitted.

    Parts fitted before training, not by gradient (the utterance statistics' standardiser, the floor:
    modules with a ``fitted`` property), are set in every checkpoint ``sertool train`` writes; stored
    unfitted, they would fail at the first prediction.

    Raises:
        SertoolError: naming ``source`` and the first such part.
    """
    unfitted = [name for name, module in model.named_modules() if getattr(module, "fitted", True) is False]
    if unfitted:
        raise SertoolError(f"{source}: its {unfitted[0]} was never fitted (the state of a model before `sertool "
                           "train` set it up); export the model again from a run's checkpoint")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def frozen_pretrained_keys(model: nn.Module) -> set[str]:
    """State keys inside pretrained encoders that do not train and hold published weights: frozen weights,
    and buffers that the model's constructor rebuilds (position ids). A model lists its pretrained
    encoders whose weights are published in ``published_modules`` (default: all of them)."""
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    published = getattr(model, "published_modules", PRETRAINED_MODULES)  # SERModel says which are published
    return {key for key in model.state_dict() if key.split(".", 1)[0] in published and key not in trainable}


@functools.lru_cache(maxsize=1)
def code_revision() -> str | None:
    """The git commit of the sertool source (with ``+dirty`` for local changes), or None outside git."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def provenance() -> dict[str, Any]:
    """What made a checkpoint: sertool version and code revision, torch version."""
    return {"sertool_version": __version__, "code_revision": code_revision(), "torch_version": str(torch.__version__)}
