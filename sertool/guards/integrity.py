"""The integrity guard: a model file that changed after sertool wrote it is refused, never read as a model.

Parsers notice only the damage that breaks their syntax. A byte flipped inside a tensor, a digit changed in
``config.json``, a training id lost from ``training_ids.json`` parse as well as the originals, and a model read
from them predicts other numbers with exit code 0 (or scores utterances it trained on). So every file of a model
carries a check its writer made, and the reader verifies it before anything is built from the file:

- a checkpoint (``torch.save``'s zip archive): the CRC-32 zip keeps of every member, which ``torch.load`` does
  not verify (``check_archive``);
- a model folder's weights and graph files: their SHA-256 (the digest the hub's LFS storage names a file by),
  recorded in ``config.json`` under ``FILES_SHA256`` (``file_digests``, ``check_file_digests``);
- ``config.json`` itself: the SHA-256 of its canonical JSON without that entry, under ``CONFIG_SHA256``
  (``seal``, ``check_seal``);
- the training ids: the digest ``config.json`` records of them (``sertool.store.sharing``).

Files written before these checks existed carry none and are read as before.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sertool.core.errors import SertoolError
from sertool.guards.reads import MAX_CHECKPOINT_BYTES, open_user_file

FILES_SHA256 = "files_sha256"  # config.json: {file name: SHA-256 of the file}
CONFIG_SHA256 = "config_sha256"  # config.json: the SHA-256 of the rest of config.json (``seal``)
_CHUNK_BYTES = 1 << 20
_AGAIN = "the file changed after it was written (a partial download or copy, a damaged disk, an edit); " \
         "download or export the model again"


def file_sha256(path: str | os.PathLike, *, what: str) -> str:
    """The SHA-256 of the file ``path`` (read through the read guard, in chunks).

    Raises:
        SertoolError: the file is missing or unreadable (naming it and ``what``).
    """
    digest = hashlib.sha256()
    with open_user_file(path, "rb", what=what, max_bytes=MAX_CHECKPOINT_BYTES) as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(paths: Iterable[Path]) -> dict[str, str]:
    """``FILES_SHA256``'s entry for files just written: each file's name and SHA-256."""
    return {path.name: file_sha256(path, what="model file") for path in paths}


def check_file_digests(folder: Path, data: dict[str, Any], *, source: str) -> None:
    """Verify every file ``config.json`` (``data``) records a digest of; a folder without the entry (written
    before it existed) passes.

    Raises:
        SertoolError: the entry is damaged, or a file is missing or differs from its digest (naming the file).
    """
    recorded = data.get(FILES_SHA256)
    if recorded is None:
        return
    if not isinstance(recorded, dict) or not all(isinstance(name, str) and isinstance(value, str)
                                                 for name, value in recorded.items()):
        raise SertoolError(f"{source}: its config.json's {FILES_SHA256} is damaged; download or export the model again")
    for name, expected in recorded.items():
        if Path(name).name != name:  # a name, never a path: the check reads files of this folder only
            raise SertoolError(f"{source}: its config.json's {FILES_SHA256} names {name!r}, not a file of the folder; "
                               "download or export the model again")
        path = folder / name
        if not path.is_file():
            raise SertoolError(f"{source}: {name} is missing (its config.json records it); copy the whole folder, or "
                               "download or export the model again")
        if file_sha256(path, what="model file") != expected:
            raise SertoolError(f"{path}: its SHA-256 is not the one config.json records: {_AGAIN}")


def _canonical(data: dict[str, Any]) -> bytes:
    return json.dumps({key: value for key, value in data.items() if key != CONFIG_SHA256}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False).encode()


def seal(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a ``config.json`` about to be written) with ``CONFIG_SHA256``: the digest of the rest of it."""
    return {**data, CONFIG_SHA256: hashlib.sha256(_canonical(data)).hexdigest()}


def check_seal(data: Any, path: Path) -> None:
    """Verify the ``seal`` of a parsed ``config.json``; one without a seal (written before seals) passes.

    Raises:
        SertoolError: the seal does not match what the file holds (naming the file).
    """
    if not isinstance(data, dict) or CONFIG_SHA256 not in data:
        return
    if data[CONFIG_SHA256] != hashlib.sha256(_canonical(data)).hexdigest():
        raise SertoolError(f"{path}: its content is not what sertool wrote ({CONFIG_SHA256} differs): {_AGAIN}")


def check_archive(path: Path, *, what: str) -> None:
    """Verify the CRC-32 of every member of the zip archive ``path`` (a ``torch.save`` file), which
    ``torch.load`` reads without checking.

    Raises:
        SertoolError: a member differs from its CRC, or the archive's structure is damaged (naming the file).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise SertoolError(f"{path}: not a readable {what} (a damaged archive: {reason})") from None
    except OSError as error:
        raise SertoolError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    if damaged is not None:
        raise SertoolError(f"{path}: a damaged {what}: its part {damaged} differs from the checksum written with it "
                           "(a partial copy or a damaged disk); use another copy, or train again")
