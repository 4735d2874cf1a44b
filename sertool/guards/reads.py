"""The read guard: every file opened because a user named it is a regular file of bounded size.

A pipe, a device (``/dev/zero``) or a socket given as a config, a labels file or a checkpoint would hang a
command or fill its memory; a folder gives a confusing error deep in a parser; a multi-GB file where a few
kB of YAML belong is a mistake. ``open_user_file`` refuses each in one line naming the file and what it
should be, before anything is read. Names that come from data (a labels file's ``FileName``) are joined to
the folder they are relative to with ``inside``, which keeps them there.

Audio is read through ``sertool.data.audio`` (libsndfile, window by window); caches, which sertool writes
itself, through their own readers.
"""
from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from sertool.core.errors import SertoolError

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
# The largest file of each kind sertool reads: far above any real one, far below what would exhaust memory.
MAX_CONFIG_BYTES = 1 * MIB  # a --config YAML, a run folder's config.yaml, a grid
MAX_JSON_BYTES = 64 * MIB  # an ensemble plan, a model folder's config.json
MAX_TABLE_BYTES = 4 * GIB  # labels, manifests, metadata, predictions, transcripts CSVs (MSP-Podcast's: ~10 MB)
MAX_TRANSCRIPT_BYTES = 1 * MIB  # one utterance's Transcripts/<stem>.txt
MAX_CHECKPOINT_BYTES = 256 * GIB  # a .pt or model.safetensors (WavLM-Large with AdamW state: ~4 GB)


def check_user_file(path: str | os.PathLike, *, what: str, max_bytes: int) -> Path:
    """``path`` as a ``Path`` once it is known to be a regular file (a link to one is fine) of at most
    ``max_bytes``.

    Raises:
        SertoolError: naming ``path`` and ``what``: missing, a folder, a pipe, device or socket, too large,
            or not readable.
    """
    path = _named(path, what)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise SertoolError(f"{path}: {what} not found") from None
    except OSError as error:
        raise SertoolError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    _check_stat(path, info, what=what, max_bytes=max_bytes)
    return path


@contextlib.contextmanager
def open_user_file(path: str | os.PathLike, mode: str = "r", *, what: str, max_bytes: int,
                   **open_kwargs) -> Iterator[IO]:
    """Open ``path`` for reading once it passes ``check_user_file``'s checks.

    The checks are made on the opened file (``fstat``), and the open never blocks, so a pipe or a device
    put in the file's place is refused, not waited on.

    Raises:
        SertoolError: as ``check_user_file``.
    """
    path = _named(path, what)
    if "r" not in mode or any(flag in mode for flag in "wax+"):
        raise ValueError(f"open_user_file reads; got mode {mode!r}")
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise SertoolError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise SertoolError(f"{path}: a folder, not a {what}") from None
    except OSError as error:
        raise SertoolError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    try:
        _check_stat(path, os.fstat(descriptor), what=what, max_bytes=max_bytes)
        os.set_blocking(descriptor, True)
        handle = os.fdopen(descriptor, mode, **open_kwargs)
    except BaseException:
        os.close(descriptor)
        raise
    with handle:
        yield handle


def read_user_bytes(path: str | os.PathLike, *, what: str, max_bytes: int) -> bytes:
    """The bytes of ``path``, through ``open_user_file``."""
    with open_user_file(path, "rb", what=what, max_bytes=max_bytes) as handle:
        try:
            return handle.read()
        except OSError as error:
            raise SertoolError(f"{path}: cannot read the {what} ({error.strerror or error})") from None


def read_user_text(path: str | os.PathLike, *, what: str, max_bytes: int, errors: str = "strict") -> str:
    """The text of ``path``, UTF-8 with or without a byte-order mark, through ``open_user_file``.

    Args:
        errors: ``"strict"``: refuse bytes that are not UTF-8; ``"replace"``: read them as U+FFFD (a log
            whose damaged lines its reader skips).

    Raises:
        SertoolError: as ``open_user_file``, or (strict) the file is not UTF-8 text (naming where it is not).
    """
    data = read_user_bytes(path, what=what, max_bytes=max_bytes)
    try:
        return data.decode("utf-8-sig", errors=errors)
    except UnicodeDecodeError as error:
        raise SertoolError(f"{path}: the {what} is not UTF-8 text ({error.reason} at byte {error.start}); save it "
                           "as UTF-8") from None


def inside(root: str | os.PathLike, name: str, *, what: str) -> Path:
    """``root/name`` for a ``name`` read from data, which must stay inside ``root``.

    Raises:
        SertoolError: ``name`` is absolute, climbs out with ``..``, or is empty, naming it and ``what``.
    """
    if not name or os.path.isabs(name) or "\0" in name or ".." in Path(name).parts:
        raise SertoolError(f"{what} {name!r} points outside {root}; it must name a file inside it")
    return Path(root) / name


def _named(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a ``Path``, refusing an empty one (it would mean the current folder) and a NUL byte."""
    text = os.fspath(path)
    if not text.strip():
        raise SertoolError(f"an empty path given for the {what}")
    if "\0" in text:
        raise SertoolError(f"{text!r}: a path cannot hold a NUL byte, so it names no {what}")
    return Path(text)


def _check_stat(path: Path, info: os.stat_result, *, what: str, max_bytes: int) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise SertoolError(f"{path}: a folder, not a {what}")
    if not stat.S_ISREG(info.st_mode):
        raise SertoolError(f"{path}: not a regular file (a pipe, a device or a socket), so not a {what}; give a file")
    if info.st_size > max_bytes:
        raise SertoolError(f"{path}: {info.st_size:,} bytes, more than a {what} holds ({_size(max_bytes)} at most); "
                           "is it the right file?")


def _size(count: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if count >= size:
            return f"{count / size:g} {unit}"
    return f"{count} bytes"
