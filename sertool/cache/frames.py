"""Frame features of a frozen encoder, computed once per audio file and read back memory-mapped.

A frozen encoder (Whisper, WavLM, HuBERT, wav2vec2) gives the same hidden states for the same audio in every
epoch, so a run can compute them once and read them from disk; what trains (the layer weights, pooling,
heads) reads them. This module stores them, one row of width D per frame (D: the hidden size, or every
stored layer's states side by side); what computes them, and when they apply, is decided above it
(``sertool.models.frame_features``, ``sertool.runtime.frames``).

Storage is a ``sertool.cache.items.ContentCache`` in ``on_disk`` mode:
``<feature_cache>/frames/<setup_key>/<uuid>.npy``, one shard per group of utterances written. A shard is a
standard ``.npy`` file (float16 ``[total_frames, D]``, the utterances' frames one after the other, readable
by any numpy) followed by an index (JSON: the SHA-256 of each utterance's audio and where its rows start),
the index's length and a magic tag. Each shard is written whole under a temporary name and renamed, so a
fill killed at any point leaves only complete shards (a temporary ``.*.tmp`` is never read as one) and the
next fill computes only what is missing; two runs filling one folder at once at worst compute an
utterance twice. Entries are read lazily: ``ShardFrames.read`` maps the shard and copies only the rows
asked for (a training crop reads its frames, not the whole file's).

Keys: the audio's SHA-256 (``sertool.cache.audio_keys``: memoised per file under its stat key in the scan
cache, so a second run hashes no audio; a rewritten file changes its stat, is hashed again, and misses).
The setup key (model weights, layers, front-end settings) names the folder, so another model never reads
these frames.
"""
from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from sertool.cache.audio_keys import AudioWindow, audio_digests
from sertool.cache.items import ItemCache
from sertool.core.errors import SertoolError

FRAME_CACHE_SUBDIR = "frames"  # under the --feature-cache folder: <kind>/<setup_key>/ as every ContentCache
FRAME_CACHE_FORMAT = 1  # the shard layout below (_ShardCodec): part of every setup key, so a new one gives new folders
STORED_DTYPE = np.float16  # 2 bytes a value: half of float32, and within its rounding of the encoder's output
GROUP_UTTERANCES = 128  # utterances per shard at most: a killed fill loses at most one group
# Utterances × frame width per shard: 128 of large-v3's last layer (1280 wide), ~110 MB. Wider rows (every layer's
# states: 13 × 768 for WavLM-Base+, 33 × 1280 for large-v3) make fewer utterances a shard, so that a group held
# in memory while it is computed and written stays about that size.
GROUP_WIDTH = GROUP_UTTERANCES * 1280
_MAGIC = b"SERFRM01"  # the shard's last 8 bytes; the 8 before them: the index's length (little-endian)
_TRAILER_BYTES = 16
_OPEN_SHARDS = 64  # memory maps kept open per process (each holds a file descriptor)


class Frames:
    """The frames ``[T, D]`` of one utterance, in memory or in a shard."""

    num_frames: int

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` as a new float16 array (in memory, independent of the shard)."""
        raise NotImplementedError


class ArrayFrames(Frames):
    """Frames held in memory: what a fill computed, before it is written."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.num_frames = int(array.shape[0])

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return np.array(self.array[start:stop], dtype=STORED_DTYPE)


class ShardFrames(Frames):
    """Rows ``first:first + num_frames`` of a shard file, read on demand (memory-mapped)."""

    def __init__(self, path: str, first: int, num_frames: int) -> None:
        self.path = path
        self.first = first
        self.num_frames = num_frames

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        start, stop, _ = slice(start, stop).indices(self.num_frames)
        try:
            return np.array(_open_shard(self.path)[self.first + start:self.first + max(start, stop)])
        except (OSError, ValueError) as error:
            raise SertoolError(f"feature cache file {self.path} cannot be read ({error}); delete it and run "
                               "again to recompute its entries") from None


@dataclass(frozen=True)
class CachedFrames:
    """The cached frames of a run's utterances, as datasets read them.

    Attributes:
        by_id: utterance id → its whole utterance's frames.
        frame_rate: frames per second (Whisper and the wav2vec2 family: 50, one per 20 ms).
        read_waveforms: the model also reads the audio beside the frames (a speaker embedding, utterance
            statistics), so items carry both.
        crop_frames: the frames of a training crop (``max_duration_s``): as many as the encoder makes of that
            much audio; None: the crop's length × ``frame_rate``, rounded.
    """

    by_id: Mapping[str, Frames]
    frame_rate: float
    read_waveforms: bool = False
    crop_frames: int | None = None


Window = TypeVar("Window", bound=AudioWindow)  # the items a cache holds (utterances)


@functools.lru_cache(maxsize=_OPEN_SHARDS)
def _open_shard(path: str) -> np.ndarray:
    return np.load(path, mmap_mode="r")


class FrameCache(ItemCache[Window, Frames]):
    """The frames of one encoder setup, kept on disk in ``<root>/frames/<setup_key>/``.

    Args:
        root: the ``--feature-cache`` folder.
        setup_key: names everything the frames depend on (``sertool.cache.items.setup_key``).
        dim: the frames' width D (every stored layer's states side by side).
        scan_cache_dir: where file digests are memoised by stat (sertool's cache folder; None: the default).
    """

    def __init__(self, root: str | os.PathLike[str], setup_key: str, *, dim: int,
                 scan_cache_dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__(Path(root) / FRAME_CACHE_SUBDIR / setup_key, _ShardCodec(dim), on_disk=True,
                         group_size=min(GROUP_UTTERANCES, max(1, GROUP_WIDTH // dim)),
                         label="computing the frames of {:,} utterances (feature cache)")
        self.dim = dim
        self.scan_cache_dir = scan_cache_dir

    def keys(self, utterances: Sequence[Window]) -> list[str]:
        """The content key of each utterance (``sertool.cache.audio_keys``).

        Raises:
            SertoolError: an audio file cannot be read (naming it).
        """
        return audio_digests(utterances, scan_cache_dir=self.scan_cache_dir)

    def disk_bytes(self) -> int:
        """The size of the shards in this setup's folder (what every run of this setup has written so far)."""
        return sum(path.stat().st_size for path in self.folder.glob(f"*{_ShardCodec.suffix}"))

    def get(self, utterances: Sequence[Window], compute: Callable[[list[Window]], Sequence[np.ndarray]], *,
            progress: Callable[[int, int], None] | None = None) -> list[Frames]:
        """The frames of ``utterances``, in order; computes (``compute``) and writes only those missing.

        Args:
            utterances: any utterances; those with the same audio share one entry.
            compute: given utterances, their frames ``[T, D]`` in that order (any float dtype).
            progress: ``(done, total)`` over the utterances computed.

        Raises:
            SertoolError: an audio file or a shard cannot be read, or a shard cannot be written (the shards
                written before stay, and the next call resumes from them).
        """
        def computed(missing: list[Window]) -> list[Frames]:
            return [ArrayFrames(np.asarray(array)) for array in compute(missing)]

        return self._get(utterances, computed, progress=progress)


class _ShardCodec:
    """A ``.npy`` of float16 ``[total_frames, D]`` followed by the JSON index ``{"sha256": [...], "offsets":
    [...]}`` (``offsets``: n + 1 row numbers), its length in 8 bytes and ``_MAGIC``."""

    suffix = ".npy"

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def encode(self, rows: Mapping[str, Frames]) -> bytes:
        arrays = [frames.read() for frames in rows.values()]
        for array in arrays:
            if array.ndim != 2 or array.shape[1] != self.dim:
                raise ValueError(f"frames of shape {array.shape}, expected [T, {self.dim}]")
        offsets = np.cumsum([0, *(len(array) for array in arrays)]).tolist()
        buffer = io.BytesIO()
        data = np.concatenate(arrays) if arrays else np.zeros((0, self.dim), STORED_DTYPE)
        np.lib.format.write_array(buffer, np.ascontiguousarray(data, dtype=STORED_DTYPE), allow_pickle=False)
        index = json.dumps({"sha256": list(rows), "offsets": offsets}).encode()
        buffer.write(index)
        buffer.write(len(index).to_bytes(8, "little"))
        buffer.write(_MAGIC)
        return buffer.getvalue()

    def decode(self, path: Path) -> dict[str, Frames]:
        try:
            with open(path, "rb") as handle:
                handle.seek(-_TRAILER_BYTES, os.SEEK_END)
                trailer = handle.read(_TRAILER_BYTES)
                if trailer[8:] != _MAGIC:
                    raise ValueError("no feature-cache index at its end")
                index_bytes = int.from_bytes(trailer[:8], "little")
                handle.seek(-_TRAILER_BYTES - index_bytes, os.SEEK_END)
                index = json.loads(handle.read(index_bytes))
            keys, offsets = index["sha256"], index["offsets"]
            shape = np.load(path, mmap_mode="r").shape
            if len(offsets) != len(keys) + 1 or shape != (offsets[-1], self.dim):
                raise ValueError(f"its index ({len(keys)} entries, {offsets[-1]} rows of {self.dim}) does not fit "
                                 f"its array {shape}")
        except (OSError, ValueError, KeyError, TypeError) as error:  # json.JSONDecodeError is a ValueError
            raise SertoolError(f"feature cache file {path} is unreadable ({error}); delete it to recompute") from None
        return {key: ShardFrames(os.fspath(path), start, stop - start)
                for key, start, stop in zip(keys, offsets[:-1], offsets[1:], strict=True)}
