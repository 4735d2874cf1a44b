"""File writing that never leaves a half-written file behind."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from sertool.errors import SertoolError


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it over ``path``, on error remove it.

    The rename is atomic on POSIX file systems, so readers see either the old file or the complete new
    one, never a partial write (a crash or a full disk leaves the old file as it was).

    Raises:
        SertoolError: the folder is not writable or the disk is full (naming the path).
    """
    path = Path(path)
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise SertoolError(f"{path}: cannot write here ({error.strerror or error})") from None
    try:
        # mkstemp creates 0600 files; give the result the permissions any new file would get (umask).
        os.fchmod(descriptor, 0o666 & ~_umask())
        with os.fdopen(descriptor, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except OSError as error:
        _remove_quietly(temp_name)
        raise SertoolError(f"{path}: write failed ({error.strerror or error}); the previous file, if any, is unchanged") from None
    except BaseException:
        _remove_quietly(temp_name)
        raise


def load_json(path: str | Path, *, what: str):
    """Parse the JSON file ``path``; ``what`` names it in errors ("ensemble plan").

    Raises:
        SertoolError: missing, unreadable or not JSON.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SertoolError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SertoolError(f"{path}: not a readable JSON {what} ({error})") from None


def check_writable(paths, *, force: bool) -> None:
    """Refuse to overwrite any existing path of ``paths`` (None entries are skipped) unless ``force``.

    Commands call this before any work, so a refused run costs nothing and loses nothing.

    Raises:
        SertoolError: naming the first existing path and ``--force``.
    """
    for path in paths:
        if path is not None and Path(path).exists() and not force:
            raise SertoolError(f"{path} exists; pass --force to overwrite it")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_quietly(name: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(name)
