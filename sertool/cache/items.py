"""One content-keyed disk cache for everything sertool derives from data and may reuse: ASR transcripts,
text embeddings, and any other per-item result of a fixed computation (e.g. frozen-encoder features).

A value depends only on its input's content and on the computation's setup, so each cache folder is
named by the setup (``setup_key``: model, revision, options) and each value by the SHA-256 of its input
(``text_digest``, ``file_digest``, ...). Renamed or moved inputs still hit; a changed setup misses.

Layout: ``<cache_dir>/<kind>/<setup_key>/`` holds immutable files in the format of a ``Codec``. Every
``ContentCache.get`` that meets new inputs writes new files through ``guards.outputs.write_cache_file``
(``atomic_write``: a temporary name, then a rename), so readers never see a partial file and concurrent
writers never overwrite each other (at worst both compute the same values). A cache that cannot be written
is a warning: the values computed are still returned.

Values too large to hold in memory (frozen-encoder frame features: ~74 GB for MSP-Podcast) use
``on_disk=True``: each group is read back from its file once written (the codec may memory-map it), the
computed values are dropped, and a write that fails is an error, since there is nowhere else to keep them.

Using it for a new kind of value takes a ``Codec`` (how a group of values becomes one file and back) and a
digest of each input::

    cache = ContentCache(cache_root() / "my_kind" / setup_key(name, identity), MyCodec())
    values = cache.get([file_digest(path) for path in paths], lambda positions: compute(positions))

A cache of one kind of input (``AudioTranscriptCache``, ``TextEmbeddingCache``, ``AudioStatisticsCache``,
``FrameCache``) subclasses ``ItemCache``, which holds the ``ContentCache`` and its counters: the subclass names
its folder and codec, keys its items (``keys``) and computes the missing ones from the items themselves.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from sertool.core.errors import SertoolError
from sertool.core.progress import task
from sertool.guards.outputs import atomic_write, check_own_folder, write_cache_file

V = TypeVar("V")
Item = TypeVar("Item")
_READ_BLOCK_BYTES = 1 << 20


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where every command caches: ``cache_dir`` (``--cache-dir``) when given, else ``$SERTOOL_CACHE``, else
    ``~/.cache/sertool``.

    Raises:
        SertoolError: a name no folder can have (a NUL byte), the file system's root or the home folder.
    """
    chosen = os.fspath(cache_dir) if cache_dir else os.environ.get("SERTOOL_CACHE") or ""
    shown = f"--cache-dir {chosen}" if cache_dir else f"SERTOOL_CACHE={chosen}"
    if "\0" in chosen:
        raise SertoolError(f"{shown!r}: a folder name cannot hold a NUL byte")
    if not chosen:
        return Path.home() / ".cache" / "sertool"
    check_own_folder(Path(chosen).expanduser(), shown)
    return Path(chosen).expanduser()


def setup_key(name: str, identity: Mapping[str, object]) -> str:
    """A folder name for one computation setup: readable ``name`` plus a digest of everything in ``identity``.

    Args:
        name: a hub id or a local path (only its last part is kept) of the model that computes the values.
        identity: every setting a value depends on (model, revision, options); JSON-serialisable.
    """
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    readable = re.sub(r"[^\w.-]+", "--", Path(name).name if Path(name).is_absolute() else name)
    return f"{readable}-{digest}"


def text_digest(text: str) -> str:
    """The key of a text: SHA-256 (hex) of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    """The key of a file: SHA-256 (hex) of its bytes (the same as ``sha256sum``).

    Raises:
        SertoolError: the file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(_READ_BLOCK_BYTES):
                digest.update(block)
    except OSError as error:
        raise SertoolError(f"{path}: audio file cannot be read ({error.strerror or error})") from None
    return digest.hexdigest()


def span_digest(file_sha256: str, span_s: tuple[float, float], *, sample_rate: int) -> str:
    """The key of a window of a file (``Utterance.span_s``): SHA-256 of the file's digest and the window's
    first and end sample at ``sample_rate``."""
    start, end = (round(seconds * sample_rate) for seconds in span_s)
    return hashlib.sha256(f"{file_sha256}@{start}-{end}".encode()).hexdigest()


class Codec(Protocol[V]):
    """How a group of cached values is stored as one file (``suffix``) and read back."""

    suffix: str

    def encode(self, rows: Mapping[str, V]) -> bytes:
        """One file's bytes for ``rows`` (key → value)."""
        ...

    def decode(self, path: Path) -> dict[str, V]:
        """The rows of one file.

        Raises:
            SertoolError: the file is unreadable or does not hold what this codec writes (naming it).
        """
        ...


class ContentCache(Generic[V]):
    """Values keyed by the content of their input, made once and kept in ``folder``.

    Args:
        folder: this setup's folder.
        codec: how a group of values becomes one file and back.
        on_disk: values live in their files (``codec.decode`` reads them lazily, e.g. memory-mapped): each
            group computed is written, then taken back from its file, so memory holds one group at a time.
            A write that fails then raises instead of keeping the values in memory.

    Attributes:
        folder: this setup's folder (``<cache_dir>/<kind>/<setup_key>``).
        hits: requested items found in the cache, over every ``get``.
        misses: requested items that had to be computed.
    """

    def __init__(self, folder: str | os.PathLike[str], codec: Codec[V], *, on_disk: bool = False) -> None:
        self.folder = Path(folder).expanduser()
        self.codec = codec
        self.on_disk = on_disk
        self.hits = 0
        self.misses = 0
        self._rows: dict[str, V] = {}
        self._loaded_files: set[str] = set()

    def get(self, keys: Sequence[str], compute: Callable[[list[int]], Sequence[V]], *, group_size: int = 0,
            progress: Callable[[int, int], None] | None = None, label: str = "computing {:,} items") -> list[V]:
        """The values of ``keys``, in order; computes only those not cached yet.

        Each distinct key is computed once, even when repeated in ``keys``.

        Args:
            keys: the content digest of each input.
            compute: given positions in ``keys`` (one per distinct missing key), their values in that order.
            group_size: compute and save at most this many at a time, so that a crash loses at most one
                group's work (0: all at once, one file).
            progress: ``(done, total)`` over the missing items, before the first group and after each; by
                default a ``sertool.core.progress`` task named ``label`` (formatted with the number of misses).

        Raises:
            SertoolError: a cache file cannot be read (the message names it), or, ``on_disk``, written (the
                groups written before stay: the next call resumes from them).
        """
        if any(key not in self._rows for key in keys):
            self._load_new_files()  # another process may have filled them in
        first_position: dict[str, int] = {}
        for position, key in enumerate(keys):
            if key not in self._rows:
                first_position.setdefault(key, position)
        missed = sum(key in first_position for key in keys)
        self.misses += missed
        self.hits += len(keys) - missed
        pending = list(first_position.items())
        step = group_size or max(len(pending), 1)
        if not pending:
            return [self._rows[key] for key in keys]
        with contextlib.nullcontext(progress) if progress is not None else task(label.format(len(pending))) as update:
            update(0, len(pending))
            for start in range(0, len(pending), step):
                group = pending[start:start + step]
                values = compute([position for _, position in group])
                rows = {key: value for (key, _), value in zip(group, values, strict=True)}
                self._rows.update(self._write(rows))
                update(start + len(group), len(pending))
        return [self._rows[key] for key in keys]

    def _load_new_files(self) -> None:
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob(f"*{self.codec.suffix}")):
            if path.name in self._loaded_files:
                continue
            for key, value in self.codec.decode(path).items():
                self._rows.setdefault(key, value)
            self._loaded_files.add(path.name)

    def _write(self, rows: Mapping[str, V]) -> Mapping[str, V]:
        """Save one group as a new file; returns the values to keep (read back from the file when ``on_disk``)."""
        name = f"{uuid.uuid4().hex}{self.codec.suffix}"
        path = self.folder / name
        if not self.on_disk:
            if write_cache_file(path, self.codec.encode(rows)):
                self._loaded_files.add(name)
            return rows
        try:
            with atomic_write(path, "wb", replace=True) as handle:
                handle.write(self.codec.encode(rows))
        except SertoolError as error:
            raise SertoolError(f"{error}; the cache keeps what was written before, and the next run goes on "
                               "from there") from None
        self._loaded_files.add(name)
        return self.codec.decode(path)


class ItemCache(Generic[Item, V]):
    """A ``ContentCache`` of values computed from items of one kind (audio, texts, utterances).

    A subclass says what differs: its folder and codec (given here), how an item is keyed (``keys``) and
    how the missing items are computed (the ``compute`` it passes to ``_get``).

    Args:
        folder: this setup's folder (``<cache_dir>/<kind>/<setup_key>``).
        codec: how a group of values becomes one file and back.
        on_disk: values live in their files (``ContentCache``'s ``on_disk``).
        group_size: items computed and saved at a time (0: all the missing ones, one file).
        label: the progress task's name, formatted with the number of items computed.

    Attributes:
        folder: this setup's folder.
    """

    def __init__(self, folder: str | os.PathLike[str], codec: Codec[V], *, on_disk: bool = False,
                 group_size: int = 0, label: str = "computing {:,} items") -> None:
        self._cache: ContentCache[V] = ContentCache(folder, codec, on_disk=on_disk)
        self._group_size = group_size
        self._label = label
        self.folder = self._cache.folder

    @property
    def hits(self) -> int:
        """Requested items found in the cache, over every ``get``."""
        return self._cache.hits

    @property
    def misses(self) -> int:
        """Requested items that had to be computed."""
        return self._cache.misses

    def keys(self, items: Sequence[Item]) -> list[str]:
        """The content key (a SHA-256, hex) of each item."""
        raise NotImplementedError

    def _get(self, items: Sequence[Item], compute: Callable[[list[Item]], Sequence[V]], *,
             progress: Callable[[int, int], None] | None = None) -> list[V]:
        """The values of ``items``, in order; ``compute`` is given the missing ones (each distinct key once).

        Raises:
            SertoolError: as ``ContentCache.get``.
        """
        def compute_positions(positions: list[int]) -> Sequence[V]:
            return compute([items[position] for position in positions])

        return self._cache.get(self.keys(items), compute_positions, group_size=self._group_size, progress=progress,
                               label=self._label)
