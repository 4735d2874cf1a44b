"""What a corpus scan learns about each file (audio headers, transcripts), kept on disk between runs.

Opening MSP-Podcast reads 150,000 audio headers and as many transcripts: about half a minute, paid by
every command (``data info``, ``train``, ``evaluate``, ``predict``) before it does anything. What a file
holds cannot change without its ``stat`` changing, so the second scan only stats each file and takes
what the first one read from the cache.

Layout: ``<cache_dir>/scans/<kind>/<hash of the folder>.npz``, one shard per folder of files (a corpus's
``Audios/`` is one shard), mapping each file name to its stat key and what was read from it. A value is
reused only when the file's size, modification time, status-change time and inode all equal those
recorded, so replacing, rewriting or touching a file (``cp``, ``sox``, an editor, ``touch``) reads it
again. Three rules keep a cached value from ever being wrong:

- the file is stat-ed *before* it is read, so a change during the read leaves a key that no longer
  matches;
- a file modified in the last ``RACY_S`` seconds before the scan is not recorded: on file systems with
  coarse timestamps, a second write in the same tick would leave its stat unchanged;
- shards are replaced whole (``atomic_write``), so readers see a complete old or new shard; two processes
  that write one at once each merge what is on disk first, and at worst one's new entries are lost
  (read again next time), never mixed up.

A shard that cannot be parsed is ignored (with one warning) and rewritten; a cache folder that cannot be
written is a warning, never an error: the scan still returns what it read.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from sertool.cache.items import cache_root
from sertool.guards.outputs import write_cache_file

log = logging.getLogger(__name__)

SCAN_CACHE_SUBDIR = "scans"
# Reads of what the cache keeps (audio headers, transcripts, digests) are I/O-bound, often on network storage:
# threads overlap the waits.
READ_THREADS = 8
FORMAT_VERSION = 2  # 2: NUL-separated texts
# A file whose modification time is this close to the scan (or later) is read but not recorded: a write in
# the same timestamp tick (1 s on ext3 or HFS+, 2 s on FAT) would not change its stat.
RACY_S = 2.0
# Files read per task of the thread pool: one task per file costs more in the pool than the read itself.
_CHUNK = 256

Value = TypeVar("Value")
Progress = Callable[[int, int], None]


class ScanCache:
    """The scan cache of one corpus scan: values read from files (``read``), and every file and folder the
    scan depended on with its stat key (``dependencies``), which a snapshot of the whole result keeps.

    Args:
        cache_dir: sertool's cache folder (None: ``$SERTOOL_CACHE`` or ``~/.cache/sertool``).
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.folder = cache_root(cache_dir) / SCAN_CACHE_SUBDIR
        self.recent_ns = time.time_ns() - int(RACY_S * 1e9)  # stat keys after this may not tell a change
        self.dependency_paths: list[str] = []
        self.dependency_keys: list[tuple[int, int, int, int]] = []

    @property
    def settled(self) -> bool:
        """Whether every dependency so far was last modified before ``RACY_S`` ahead of the scan, so that
        its stat key tells any later change."""
        return all(key[1] <= self.recent_ns for key in self.dependency_keys)

    def depend_on(self, paths: Sequence[str], keys: Sequence[tuple[int, int, int, int]] | None = None) -> None:
        """Record that the scan's result depends on ``paths`` (files or folders) as they are now (``keys``:
        their stat keys, taken before they were read; None: stat them now)."""
        self.dependency_paths.extend(paths)
        self.dependency_keys.extend(keys if keys is not None else [stat_key(path) for path in paths])

    def read(
        self,
        paths: Sequence[str | os.PathLike[str]],
        read: Callable[[str], Value],
        *,
        errors: tuple[type[Exception], ...],
        kind: str,
        columns: Sequence[type],
        encode: Callable[[Any], tuple] = tuple,
        decode: Callable[[tuple], Any] = tuple,
        threads: int = 1,
        progress: Progress | None = None,
    ) -> list[Value | Exception]:
        """``read(path)`` of every path, from the cache where the file is unchanged since it was cached.

        Args:
            paths: the files; their folders are the shards.
            read: reads what is wanted from one file.
            errors: what ``read`` raises for a bad file (missing, unreadable): returned in place of a value,
                never cached (a missing file is stat-ed again next time and costs no more than a stat). Other
                exceptions propagate.
            kind: the cache's name (``"audio-headers"``): one kind of value per folder.
            columns: the types of a stored value's fields, ``int`` (64-bit) or ``str``.
            encode, decode: a value to a tuple of ``columns`` and back; ``decode`` raises ``ValueError`` on
                a tuple it cannot have written (the file is then read again).
            threads: reads of uncached files run in this many threads (file reads wait on the disk).
            progress: ``(done, total)`` as files are looked up and read.

        Returns:
            Per path, in order: the value, or the ``errors`` exception ``read`` raised.
        """
        texts = [os.fspath(path) for path in paths]
        shards, places, keys, results, misses = self._look_up(texts, kind=kind, columns=columns, decode=decode)
        self.depend_on(texts, keys)
        if progress is not None:
            progress(len(texts) - len(misses), len(texts))
        _read_in_chunks(texts, misses, read, errors=errors, results=results, threads=threads, progress=progress)
        for index in misses:
            key, value = keys[index], results[index]
            if key is _NO_FILE or isinstance(value, Exception) or key[1] > self.recent_ns:
                continue
            shard, name = places[index]
            shard.new[name] = (key, encode(value))
        for shard in shards:
            shard.save()
        return results

    def _look_up(
        self, texts: list[str], *, kind: str, columns: Sequence[type], decode: Callable[[tuple], Any],
    ) -> tuple[list[_Shard], list[tuple[_Shard, str]], list[tuple[int, int, int, int]], list[Any], list[int]]:
        """The warm path, kept to a stat and a lookup per file in Python; the comparisons run in numpy.

        Returns:
            The shards, each path's shard and name, its stat key, the values found (None elsewhere), and
            the positions of the paths to read.
        """
        if not texts:  # nothing to look up (every row of a table dropped): np.split would still make one group
            return [], [], [], [], []
        shards: dict[str, _Shard] = {}  # by the folder as given; the file is named by its absolute path
        places, shard_numbers, rows, keys = [], [], [], []
        for path in texts:
            parent, _, name = path.rpartition(os.sep)  # os.path.split costs 5× more, and this loop runs per file
            if not parent and path.startswith(os.sep):
                parent = os.sep
            shard = shards.get(parent)
            if shard is None:
                shard = shards[parent] = _Shard(self.folder / kind, os.path.abspath(parent), columns)
                shard.number = len(shards) - 1
            places.append((shard, name))
            shard_numbers.append(shard.number)
            rows.append(shard.index.get(name, -1))
            keys.append(_file_key(path))
        results: list[Any] = [None] * len(texts)
        misses: list[int] = []
        key_array = np.array(keys, dtype=np.int64).reshape(len(keys), 4)
        row_array = np.array(rows, dtype=np.int64)
        numbers = np.array(shard_numbers, dtype=np.int64)
        group_ends = np.cumsum(np.bincount(numbers, minlength=len(shards)))[:-1]
        groups = np.split(np.argsort(numbers, kind="stable"), group_ends)
        hit = np.zeros(len(texts), dtype=bool)
        for shard, mine in zip(shards.values(), groups, strict=True):
            known = mine[row_array[mine] >= 0]
            matched = known[(shard.keys[row_array[known]] == key_array[known]).all(axis=1)]
            for index, value in zip(matched.tolist(), shard.values(row_array[matched]), strict=True):
                try:
                    results[index] = decode(value)
                except ValueError:  # an entry this code cannot have written: read the file again
                    misses.append(index)
            hit[matched] = True
        misses.extend(np.flatnonzero(~hit).tolist())
        misses.sort()
        return list(shards.values()), places, keys, results, misses


def _file_key(path: str) -> tuple[int, int, int, int]:
    """The stat key of a regular file; ``_NO_FILE`` for anything else (``read`` says what is wrong with it)."""
    try:
        status = os.stat(path)
    except OSError:
        return _NO_FILE
    if not stat.S_ISREG(status.st_mode):
        return _NO_FILE
    return status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino


def _read_in_chunks(texts: list[str], misses: list[int], read: Callable[[str], Any], *,
                    errors: tuple[type[Exception], ...], results: list[Any], threads: int,
                    progress: Progress | None) -> None:
    """``read`` each path of ``misses`` into ``results`` (or the ``errors`` it raised), in tasks of ``_CHUNK``
    files: one thread-pool task per file costs more than the read itself."""
    def read_chunk(chunk: Sequence[int]) -> None:
        for index in chunk:
            try:
                results[index] = read(texts[index])
            except errors as error:
                results[index] = error

    chunks = [misses[start:start + _CHUNK] for start in range(0, len(misses), _CHUNK)]
    done = len(texts) - len(misses)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for chunk, _ in zip(chunks, pool.map(read_chunk, chunks), strict=True):
            done += len(chunk)
            if progress is not None:
                progress(done, len(texts))


def stat_key(path: str) -> tuple[int, int, int, int]:
    """Size, modification and status-change times (ns) and inode of ``path``; ``_NO_FILE`` where it is missing."""
    try:
        status = os.stat(path)
    except OSError:
        return _NO_FILE
    return status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino


_NO_FILE = (-1, -1, -1, -1)  # the stat key of a path that is no regular file: matches no entry


class _Shard:
    """The cache file of one folder: an ``.npz`` of the file names, their stat keys (``[n, 4]`` int64:
    size, mtime ns, ctime ns, inode) and one array per value column (int64, or UTF-8 bytes + offsets)."""

    def __init__(self, kind_folder: Path, folder: str, columns: Sequence[type]) -> None:
        self.folder = folder
        self.columns = tuple(columns)
        digest = hashlib.sha256(os.fsencode(folder)).hexdigest()[:32]
        self.path = kind_folder / f"{digest}.npz"
        self.names, self.keys, self._columns = self._load()
        self.index = {name: row for row, name in enumerate(self.names)}
        self.new: dict[str, tuple[tuple, tuple]] = {}
        self.number = 0  # its place among the shards of one scan

    def values(self, rows: np.ndarray) -> Iterator[tuple]:
        """The stored values of ``rows``, as tuples of the columns' types."""
        return zip(*(column(rows) for column in self._columns), strict=True) if self._columns else iter(())

    def save(self) -> None:
        """Write the shard with the new entries, over what another process may have written since."""
        if not self.new:
            return
        names, keys, columns = self._load(quiet=True)  # ours are the freshest for the files this scan read
        everything = {name: (tuple(key), value) for name, key, value in
                      zip(names, keys.tolist(), self.values_of(columns, len(names)), strict=True)}
        everything.update(self.new)
        names = list(everything)
        arrays: dict[str, Any] = {"format": np.array([FORMAT_VERSION]), "folder": _strings([self.folder])[0],
                  "names": _strings(names)[0], "name_offsets": _strings(names)[1],
                  "keys": np.array([key for key, _ in everything.values()], dtype=np.int64).reshape(-1, 4)}
        for number, kind in enumerate(self.columns):
            field = [value[number] for _, value in everything.values()]
            if kind is int:
                arrays[f"column{number}"] = np.array(field, dtype=np.int64)
            else:
                arrays[f"column{number}"], arrays[f"offsets{number}"] = _strings(field)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_cache_file(self.path, buffer.getvalue())

    @staticmethod
    def values_of(columns: list[Callable[[np.ndarray], list]], count: int) -> Iterator[tuple]:
        rows = np.arange(count)
        return zip(*(column(rows) for column in columns), strict=True) if columns else iter(())

    def _load(self, *, quiet: bool = False) -> tuple[list[str], np.ndarray, list[Callable[[np.ndarray], list]]]:
        """Names, stat keys and column readers on disk; none where the file is missing or damaged."""
        empty: tuple[list[str], np.ndarray, list[Callable[[np.ndarray], list]]] = (
            [], np.zeros((0, 4), dtype=np.int64), [])
        try:
            with np.load(self.path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
        except FileNotFoundError:
            return empty
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:  # unreadable, not an npz
            return empty if quiet else self._damaged(str(error), empty)
        try:
            if int(arrays["format"][0]) != FORMAT_VERSION or _unstrings(arrays["folder"], None) != [self.folder]:
                return empty  # written by another version of sertool (or for another folder): replaced quietly
            names = _unstrings(arrays["names"], arrays["name_offsets"])
            keys = arrays["keys"].astype(np.int64).reshape(len(names), 4)
            columns = []
            for number, kind in enumerate(self.columns):
                data = arrays[f"column{number}"]
                if kind is int:
                    if data.shape != (len(names),):
                        raise ValueError(f"column {number} holds {data.shape} values for {len(names)} files")
                    columns.append(_int_column(data.astype(np.int64)))
                else:
                    texts = _unstrings(data, arrays[f"offsets{number}"])
                    if len(texts) != len(names):
                        raise ValueError(f"column {number} holds {len(texts)} texts for {len(names)} files")
                    columns.append(_text_column(texts))
        except (KeyError, ValueError, IndexError, TypeError, UnicodeDecodeError) as error:
            return empty if quiet else self._damaged(str(error), empty)
        return names, keys, columns

    def _damaged(self, why: str, empty):
        log.warning("warning: ignoring the scan cache file %s (%s); the files it described are read again",
                    self.path, why)
        return empty


def _int_column(data: np.ndarray) -> Callable[[np.ndarray], list]:
    return lambda rows: data[rows].tolist()


def _text_column(texts: list[str]) -> Callable[[np.ndarray], list]:
    return lambda rows: [texts[row] for row in rows.tolist()]


def _strings(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Texts as one UTF-8 byte array, NUL-separated, and where each ends in it (file names keep their raw
    bytes). The separator lets ``_unstrings`` split 150,000 texts in one call."""
    encoded = [text.encode("utf-8", "surrogateescape") for text in texts]
    lengths = np.array([len(item) for item in encoded], dtype=np.int64)
    ends = np.cumsum(lengths + 1) - 1  # each text's end; a separator follows every one but the last
    return np.frombuffer(b"\0".join(encoded), dtype=np.uint8).copy(), ends


def _unstrings(data: np.ndarray, offsets: np.ndarray | None) -> list[str]:
    """Inverse of ``_strings`` (``offsets`` None: the whole array is one text)."""
    text = data.astype(np.uint8).tobytes().decode("utf-8", "surrogateescape")
    if offsets is None:
        return [text]
    ends = offsets.astype(np.int64)
    if not len(ends):
        return []
    if ends[-1] != data.size or ends[0] < 0 or (np.diff(ends) < 1).any():
        raise ValueError("string offsets do not fit the data")
    parts = text.split("\0")
    if len(parts) == len(ends):  # no text holds a NUL itself: the split is exact
        return parts
    blob = data.astype(np.uint8).tobytes()
    starts = [0, *(end + 1 for end in ends[:-1].tolist())]
    return [blob[start:end].decode("utf-8", "surrogateescape")
            for start, end in zip(starts, ends.tolist(), strict=True)]
