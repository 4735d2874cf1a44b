"""The content keys of audio: every cache of values computed from audio (transcripts, frame features,
utterance statistics) keys its entries by them.

A file's key is the SHA-256 of its bytes (``file_digest``, the same as ``sha256sum``); a window of a file
(``Utterance.span_s``) is keyed by the file's digest and the window's span (``span_digest``). Hashing reads
every byte, which at MSP-Podcast's scale (150,000 files) takes minutes, so digests are memoised in the scan
cache under each file's stat key (size, modification and status-change times, inode): a second command
hashes no audio, and a rewritten file changes its stat, is hashed again, and misses.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from sertool.cache.items import file_digest, span_digest
from sertool.cache.scan import READ_THREADS, ScanCache
from sertool.core.constants import SAMPLE_RATE
from sertool.core.errors import SertoolError
from sertool.core.progress import task

_DIGEST_KIND = "sha256"  # the scan cache's name for memoised file digests


@runtime_checkable
class AudioWindow(Protocol):
    """What the caches key by: an audio file and, for a window of it, the window's span (``data.records.Utterance``
    is one; the caches never need more of it)."""

    @property
    def audio_path(self) -> Path: ...

    @property
    def span_s(self) -> tuple[float, float] | None: ...


def file_digests(paths: Sequence[str | os.PathLike[str]], *,
                 scan_cache_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The SHA-256 of each distinct file, by its path (as ``os.fspath`` spells it); unchanged files' digests
    come from the scan cache.

    Args:
        paths: audio files (repeats are hashed once).
        scan_cache_dir: sertool's cache folder (None: ``$SERTOOL_CACHE`` or ``~/.cache/sertool``).

    Raises:
        SertoolError: a file cannot be read (naming it).
    """
    distinct = sorted({os.fspath(path) for path in paths})
    if not distinct:
        return {}
    with task(f"hashing {len(distinct):,} audio files (cache keys)") as update:
        # Threads: hashlib releases the GIL on large blocks, and the reads wait on the disk.
        found = ScanCache(scan_cache_dir).read(
            distinct, file_digest, errors=(SertoolError,), kind=_DIGEST_KIND, columns=(str,),
            encode=lambda digest: (digest,), decode=_decode_digest, threads=READ_THREADS, progress=update)
    digests: dict[str, str] = {}
    for path, digest in zip(distinct, found, strict=True):
        if isinstance(digest, Exception):
            raise digest
        digests[path] = digest
    return digests


def audio_digests(items: Sequence[AudioWindow | str | os.PathLike[str]], *,
                  scan_cache_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """The content key of each item's audio: its file's SHA-256, or for an utterance that is a window of a
    file, the digest of the file's digest and the span.

    Args:
        items: utterances or audio file paths (each file hashed once, however many items it holds).
        scan_cache_dir: as for ``file_digests``.

    Raises:
        SertoolError: an audio file cannot be read (naming it).
    """
    paths = [os.fspath(item.audio_path if isinstance(item, AudioWindow) else item) for item in items]
    digests = file_digests(paths, scan_cache_dir=scan_cache_dir)
    return [span_digest(digests[path], item.span_s, sample_rate=SAMPLE_RATE)
            if isinstance(item, AudioWindow) and item.span_s is not None else digests[path]
            for item, path in zip(items, paths, strict=True)]


def _decode_digest(entry: tuple) -> str:
    (digest,) = entry
    if len(digest) != 64:
        raise ValueError(f"not a SHA-256: {digest!r}")
    return digest
