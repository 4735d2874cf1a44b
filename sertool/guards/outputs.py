"""The output guard: every file sertool writes is declared, checked, then committed here.

A command declares its outputs first, in an ``OutputPlan``, before it reads a corpus or loads a model::

    outputs = OutputPlan(force=options.force)
    out = outputs.file(options.out, flag="--out")
    scores = outputs.file(options.scores, flag="--scores")
    ...                                   # the work
    with outputs.writing(out) as handle:     # the commit
        write_predictions(predictions, handle)

Declaring refuses, in one line naming the flag: two outputs that are one file; an existing file without
``--force``, a folder or a device where a file is to go; a name longer than the file system holds; a
parent that is a file or cannot be written. A name that comes from data (a split name, a system name) is
made a plain file name (``in_folder``) and so stays inside the folder the user named.

Committing writes a temporary file beside the target, flushes it to disk, and then either renames it over
the target (``--force``) or links it to the target's name, which fails when the name exists: two commands
racing for one path cannot both succeed, and a file that appeared meanwhile is never replaced. A crash or
a full disk leaves the previous file whole and no partial file under the target's name.

Files a command manages itself (a run folder's checkpoints and logs, caches) are written with
``atomic_write(..., replace=True)``: atomically, and replaced by design.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sertool.core.errors import SertoolError

log = logging.getLogger(__name__)

# POSIX's usual limits, used where the file system does not say (pathconf fails).
_DEFAULT_NAME_MAX_BYTES = 255
_DEFAULT_PATH_MAX_BYTES = 4096
# Characters of the target's name kept in its temporary file's name: enough to recognise it, short enough
# that a target of the longest allowed name still has a temporary name the file system accepts.
_TEMP_NAME_CHARS = 40
# A hard link cannot be made here (FAT, some network file systems): claim the name with O_EXCL instead.
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}
# Cache folders a warning was printed for: one line per folder and process, not one per write.
_UNWRITABLE_CACHES: set[Path] = set()


@dataclass(frozen=True)
class _Declared:
    path: Path
    flag: str
    is_folder: bool = False


class OutputPlan:
    """The outputs of one command, checked when declared and committed through ``writing`` / ``write_data``.

    Args:
        force: existing files may be replaced (``--force``); otherwise each commit is exclusive.
    """

    def __init__(self, *, force: bool = False) -> None:
        self.force = force
        self._declared: dict[str, _Declared] = {}
        self._committed: list[Path] = []  # every file committed, in order
        self._made_folders: list[Path] = []  # folders that did not exist before a commit into them

    def file(self, path: str | os.PathLike | None, *, flag: str) -> Path | None:
        """Declare an output file (None: the flag was not given); returns it as an absolute path.

        Raises:
            SertoolError: naming ``flag``: the path is another output's, exists without ``force``, is a
                folder or not a regular file, has a name too long, or lies where nothing can be written.
        """
        return None if path is None else self._file(path, flag=flag)

    def in_folder(self, folder: str | os.PathLike, name: str, *, flag: str) -> Path:
        """Declare the output ``folder/name`` where ``name`` comes from data (a split or system name): it is
        made a plain file name first (``plain_name``), so it cannot point outside ``folder``."""
        return self._file(Path(folder) / plain_name(name), flag=f"{flag} ({name})")

    def _file(self, path: str | os.PathLike, *, flag: str) -> Path:
        target = _absolute(path, flag=flag)
        shown = f"{flag} {os.fspath(path)}"
        self._claim(target, flag, shown, is_folder=False)
        if os.path.lexists(target):
            mode = os.lstat(target).st_mode
            if stat.S_ISDIR(mode):
                raise SertoolError(f"{shown}: a folder is there; give the path of a file")
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                raise SertoolError(f"{shown}: not a regular file (a device, a pipe or a socket); give the path of "
                                   "a file")
            if not self.force:
                raise SertoolError(f"{shown} exists; pass --force to overwrite it")
        check_creatable(target, shown)
        return target

    def folder(self, path: str | os.PathLike, *, flag: str) -> Path:
        """Declare an output folder, whose files the command names itself (a run folder, a model folder, a
        corpus); returns it as an absolute path.

        Raises:
            SertoolError: naming ``flag``: the path is another output's, a file, the file system's root or the
                home folder, has a name too long, or lies where nothing can be written.
        """
        target = _absolute(path, flag=flag)
        shown = f"{flag} {os.fspath(path)}"
        self._claim(target, flag, shown, is_folder=True)
        if os.path.exists(target) and not os.path.isdir(target):
            raise SertoolError(f"{shown}: a file is there, not a folder; give a folder")
        check_own_folder(target, shown)
        check_creatable(target, shown)
        return target

    @contextlib.contextmanager
    def writing(self, path: Path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
        """Write the declared output ``path`` (see the module docstring); yields the open temporary file."""
        self._require_declared(path)
        self._made_folders.extend(_missing_folders(path.parent))
        with atomic_write(path, mode, replace=self.force, **open_kwargs) as handle:
            yield handle
        self._committed.append(path)

    def write_data(self, path: Path, data: bytes) -> None:
        """Commit ``data`` as the declared output ``path``."""
        with self.writing(path, "wb") as handle:
            handle.write(data)

    @contextlib.contextmanager
    def holding(self, folder: Path, *, flag: str, undo_on_failure: bool = False) -> Iterator[None]:
        """Hold the declared output folder ``folder`` (created if missing) while its files are written: a second
        command writing into it is refused at once instead of mixing its files with these. The lock is
        ``flock(2)`` on the folder itself, so nothing is added to it; the kernel drops it when the process
        ends, however it ends. A folder this call created is removed again if the block fails while it is
        still empty.

        Args:
            undo_on_failure: when the block fails (an error, Ctrl-C), first remove every file committed in it
                and every folder those commits created, so that a failed command leaves nothing it made (a
                corpus whose files only make sense whole). Off where a partial result is worth keeping (a run
                folder's ``last.pt`` resumes). A file the command replaced (``--force``) is not brought back.

        Raises:
            SertoolError: another process holds the folder, or it cannot be created.
        """
        self._require_declared(folder)
        created = not os.path.isdir(folder)
        committed, made = len(self._committed), len(self._made_folders)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            raise SertoolError(f"{flag} {folder}: cannot create the folder ({error.strerror or error})") from None
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SertoolError(f"{flag} {folder}: another sertool command is writing into this folder; wait for "
                                   f"it to end, or choose another {flag}") from None
            except OSError:
                pass  # a file system without locks: nothing to hold, the exclusive commits still apply
            try:
                yield
            except BaseException:
                if undo_on_failure:
                    _undo(self._committed[committed:], self._made_folders[made:])
                if created:
                    with contextlib.suppress(OSError):
                        folder.rmdir()  # only if empty: never a file this or another command wrote
                raise
        finally:
            os.close(descriptor)

    def _claim(self, target: Path, flag: str, shown: str, *, is_folder: bool) -> None:
        key = _identity(target)
        other = self._declared.get(key)
        if other is not None:
            raise SertoolError(f"{shown}: the same path as {other.flag} {other.path}; give each output its own path")
        self._declared[key] = _Declared(target, flag, is_folder)

    def _require_declared(self, path: Path) -> None:
        key = _identity(path)
        declared = key in self._declared or any(
            entry.is_folder and key.startswith(folder + os.sep) for folder, entry in self._declared.items())
        if not declared:  # a programming error: the checks before any work never saw this output
            raise AssertionError(f"output {path} was not declared in the command's OutputPlan")


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet (committing a file into ``folder`` creates them)."""
    missing = []
    while not os.path.isdir(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _undo(files: Iterable[Path], folders: Iterable[Path]) -> None:
    """Remove ``files``, then those of ``folders`` that are empty, deepest first; quietly, since this runs while
    another error is on its way to the user."""
    for path in files:
        _remove_quietly(os.fspath(path))
    for folder in sorted(set(folders), key=lambda path: len(path.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty: never a file another command wrote


def plain_name(name: str) -> str:
    """``name`` (a split or system name read from data) as one plain file name: path separators, NUL and
    control characters become ``_``, a name of dots or a leading dot gets a ``_`` in front, an empty name
    becomes ``_``. Two names that differ only there map to one file name, which ``OutputPlan`` then refuses
    as two outputs on one path."""
    cleaned = "".join("_" if char in "/\\\0" or ord(char) < 32 else char for char in name)
    if not cleaned or cleaned.startswith("."):
        cleaned = "_" + cleaned
    return cleaned


def check_own_folder(target: Path, shown: str) -> None:
    """Refuse, naming ``shown``, the root of the file system or the home folder as a folder sertool fills (a
    corpus, a run, a model, a cache): its files would land among the system's or the user's own (`--out /
    --force` once wrote a model's config.json and README.md into /). A folder of its own below them is fine.

    Raises:
        SertoolError: ``target`` is ``/`` (a drive's root) or the home folder.
    """
    resolved = Path(os.path.realpath(target))
    if resolved == Path(resolved.anchor):
        raise SertoolError(f"{shown}: the root of the file system; give a folder of its own (e.g. "
                           f"{resolved / 'sertool'})")
    if resolved == Path(os.path.realpath(Path.home())):
        raise SertoolError(f"{shown}: your home folder itself; give a folder of its own (e.g. {resolved / 'sertool'})")


def check_creatable(target: Path, shown: str) -> None:
    """Refuse, naming ``shown``, a path that cannot be created: a name longer than the file system holds
    (in bytes), a path over its length limit, or a nearest existing ancestor that is a file or cannot be
    written. Folders between that ancestor and ``target`` are created when the file is committed."""
    anchor = target.parent
    while not os.path.exists(anchor) and anchor != anchor.parent:
        anchor = anchor.parent
    name_max = _limit(anchor, "PC_NAME_MAX", _DEFAULT_NAME_MAX_BYTES)
    for part in target.relative_to(anchor).parts:
        size = len(os.fsencode(part))
        if size > name_max:
            raise SertoolError(f"{shown}: the name {part[:24]}… is {size} bytes long, and this file system holds "
                               f"names of at most {name_max}; choose a shorter name")
    path_max = _limit(anchor, "PC_PATH_MAX", _DEFAULT_PATH_MAX_BYTES)
    if len(os.fsencode(target)) >= path_max:
        raise SertoolError(f"{shown}: the path is {len(os.fsencode(target))} bytes long, over this file system's "
                           f"limit of {path_max}; choose a shorter path")
    if not os.path.isdir(anchor):
        raise SertoolError(f"{shown}: {anchor} is a file, not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise SertoolError(f"{shown}: cannot write in {anchor} (no permission, or a read-only file system)")


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", *, replace: bool, **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; when the block ends, flush it to disk and commit it as ``path``;
    on an error remove it. Readers see the old file or the complete new one, never a partial write.

    Args:
        path: the target.
        mode: the ``open`` mode of the temporary file ("w", "wb").
        replace: rename over an existing ``path``; False: the commit fails if ``path`` exists by then
            (see the module docstring), naming it.

    Raises:
        SertoolError: the folder cannot be written, the disk is full, or (``replace=False``) ``path``
            exists (naming the path; the previous file, if any, is unchanged).
    """
    path = Path(path)
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name[:_TEMP_NAME_CHARS]}.", suffix=".tmp",
                                                 dir=path.parent)
    except OSError as error:
        raise SertoolError(f"{path}: cannot write here ({error.strerror or error})") from None
    try:
        # mkstemp creates 0600 files; give the result the permissions any new file would get (umask).
        os.fchmod(descriptor, 0o666 & ~_umask())
        with os.fdopen(descriptor, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _commit(temp_name, path, replace=replace)
    except OSError as error:
        _remove_quietly(temp_name)
        raise SertoolError(f"{path}: write failed ({error.strerror or error}); the previous file, if any, is "
                           "unchanged") from None
    except BaseException:
        _remove_quietly(temp_name)
        raise


def write_cache_file(path: str | Path, data: bytes) -> bool:
    """Write one file of an on-disk cache atomically; a cache that cannot be written is only a warning.

    Caches (text embeddings, ASR transcripts) save work, they never change a result: when the folder
    cannot be written (a read-only ``HOME``, a ``--cache-dir`` that is a file, a full disk) the caller
    keeps what it computed in memory, and one warning per folder says so and how to fix it.

    Returns:
        Whether the file was written.
    """
    path = Path(path)
    try:
        with atomic_write(path, "wb", replace=True) as handle:
            handle.write(data)
        return True
    except SertoolError as error:
        if path.parent not in _UNWRITABLE_CACHES:
            _UNWRITABLE_CACHES.add(path.parent)
            log.warning("warning: %s; going on without caching (pass --cache-dir or set SERTOOL_CACHE to a "
                        "writable folder)", error)
        return False


def _commit(temp_name: str, path: Path, *, replace: bool) -> None:
    """Give the finished temporary file ``path``'s name (see the module docstring)."""
    if replace:
        os.replace(temp_name, path)
        return
    try:
        os.link(temp_name, path)
    except FileExistsError:
        raise SertoolError(f"{path} appeared while this command ran (another command writing the same file?); it "
                           "was left as it is. Pass --force to overwrite it") from None
    except OSError as error:
        if error.errno not in _NO_LINKS:
            raise
        try:  # claim the name exclusively, then fill it by a rename: a reader may see it empty for a moment
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask()))
        except FileExistsError:
            raise SertoolError(f"{path} appeared while this command ran (another command writing the same "
                               "file?); it was left as it is. Pass --force to overwrite it") from None
        os.replace(temp_name, path)
        return
    os.remove(temp_name)


def _absolute(path: str | os.PathLike, *, flag: str) -> Path:
    """``path`` made absolute, refusing what no file system names: an empty path (it would mean the current
    folder) and a NUL byte."""
    text = os.fspath(path)
    if not text.strip():
        raise SertoolError(f"{flag}: an empty path; give the path of the output")
    if "\0" in text:
        raise SertoolError(f"{flag} {text!r}: a path cannot hold a NUL byte")
    return Path(os.path.abspath(os.path.expanduser(text)))


def _identity(path: Path) -> str:
    """One string per file, however it is written: the real path of its folder and its name."""
    return os.path.join(os.path.realpath(path.parent), path.name)


def _limit(folder: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError):
        return default


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_quietly(name: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(name)


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` to a log that a command keeps itself (a run folder's ``metrics.jsonl``), in one write:
    a crash tears at most its last line, which the log's readers skip.

    Raises:
        SertoolError: the file cannot be written (naming it).
    """
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as error:
        raise SertoolError(f"{path}: write failed ({error.strerror or error})") from None


def remove_files(paths: Iterable[str | os.PathLike]) -> None:
    """Remove files a command owns and was asked to replace (``train --force``'s previous run, ``data demo
    --force``'s previous corpus, unfinished temporaries); a file already gone is fine.

    Raises:
        SertoolError: a file cannot be removed (naming it).
    """
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            continue
        except OSError as error:
            raise SertoolError(f"{path}: cannot remove it ({error.strerror or error})") from None
