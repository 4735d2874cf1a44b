"""ASR transcripts kept on disk: each audio content is transcribed once per ASR setup.

What transcribes is the caller's (``Transcribes``: ``sertool.models.asr.Transcriber`` is one), and so is how
an item's audio is read (``read``: ``sertool.models.asr.TranscriptCache`` reads files and windows as
``sertool.data`` does); this module keys, stores and reads back.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import torch
from torch import Tensor

from sertool.cache.audio_keys import AudioWindow, audio_digests
from sertool.cache.items import ItemCache
from sertool.core.errors import SertoolError

log = logging.getLogger(__name__)

TRANSCRIPT_CACHE_SUBDIR = "transcripts"  # under sertool's cache folder, beside text_embeddings/
ROWS_PER_FILE = 256  # transcripts per cache file: a crash loses at most this much work

# An audio file, a 1-D waveform at 16 kHz, or an utterance (its whole file, or its window of one).
Audio = TypeVar("Audio", bound=str | os.PathLike | Tensor | AudioWindow)


class Transcribes(Protocol):
    """What ``AudioTranscriptCache`` needs of an ASR setup (``sertool.models.asr.Transcriber`` is one)."""

    @property
    def model_name_or_path(self) -> str: ...

    @property
    def cache_key(self) -> str:
        """Names everything a transcript depends on (``sertool.cache.items.setup_key``)."""
        ...

    def transcribe(self, waveforms: Sequence[Tensor]) -> list[str]:
        """One line of text per 1-D 16 kHz waveform, in order."""
        ...


class AudioTranscriptCache(ItemCache[Audio, str]):
    """Transcripts of one ASR setup, made once and kept on disk (an ``ItemCache``).

    Keys are the SHA-256 of the audio: of the file's bytes for a path or a whole-file utterance (cheap, no
    decoding, and verifiable with ``sha256sum``), of the file's digest and the span for a window of a file
    (`predict`'s windows of long audio: each transcribed alone, reading only its span), of the float32
    samples for a waveform. A waveform never matches the others, so pass files when you can. A transcript
    depends only on the audio and ``transcriber.cache_key`` (model, revision, language, decoding), so
    renamed or moved files still hit.

    Layout: ``<cache_dir>/<transcriber.cache_key>/*.jsonl``, immutable JSON-lines files of
    ``{"sha256": hex, "text": str}`` (plain text: readable, never executed), written as
    ``sertool.cache.items`` describes.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], transcriber: Transcribes, *, read: Callable[[Audio], Tensor],
                 scan_cache_dir: str | os.PathLike[str] | None = None) -> None:
        """
        Args:
            cache_dir: the transcripts' folder (one subfolder per ASR setup).
            transcriber: the ASR setup.
            read: the 1-D 16 kHz waveform of an item (a waveform itself; a file or a window of one decoded),
                called on the items that miss only.
            scan_cache_dir: sertool's cache folder, where file digests are memoised (None: the default).
        """
        super().__init__(Path(cache_dir) / transcriber.cache_key, TranscriptCodec(), group_size=ROWS_PER_FILE,
                         label="transcribing {:,} utterances (ASR)")
        self.transcriber = transcriber
        self.read = read
        self.scan_cache_dir = scan_cache_dir

    def keys(self, items: Sequence[Audio]) -> list[str]:
        """The SHA-256 of each item's audio: a waveform's float32 samples, else as
        ``sertool.cache.audio_keys`` keys files and windows (each file hashed once, memoised by its stat).

        Raises:
            SertoolError: an audio file cannot be read (naming it).
        """
        file_keys = iter(audio_digests([item for item in items if not isinstance(item, Tensor)],
                                       scan_cache_dir=self.scan_cache_dir))
        return [hashlib.sha256(item.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()
                if isinstance(item, Tensor) else next(file_keys) for item in items]

    def get(self, audio: Sequence[Audio], *, progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Transcripts of ``audio`` (file paths, utterances or 1-D 16 kHz waveforms), in order; transcribes
        only misses.

        Each distinct audio content is transcribed once, even when repeated in ``audio``. Audio files
        are decoded only when they miss, ``ROWS_PER_FILE`` at a time, and each such group is saved as
        soon as it is done.

        Args:
            progress: ``(done, total)`` over the audio items that miss, as they are transcribed.

        Raises:
            SertoolError: an audio file or a cache file cannot be read (the message names it).
        """
        return self._get(audio, self._transcribe, progress=progress)

    def _transcribe(self, missing: list[Audio]) -> list[str]:
        log.info("transcribing %d audio items with %s", len(missing), self.transcriber.model_name_or_path)
        return self.transcriber.transcribe([self.read(item) for item in missing])


class TranscriptCodec:
    """JSON lines of ``{"sha256": hex, "text": str}``."""

    suffix = ".jsonl"

    def encode(self, rows: Mapping[str, str]) -> bytes:
        return "".join(json.dumps({"sha256": digest, "text": text}, ensure_ascii=False) + "\n"
                       for digest, text in rows.items()).encode("utf-8")

    def decode(self, path: Path) -> dict[str, str]:
        rows: dict[str, str] = {}
        try:
            with open(path, encoding="utf-8") as handle:
                for line_number, line in enumerate(handle, start=1):
                    row = json.loads(line)
                    if not (isinstance(row, dict) and all(isinstance(row.get(key), str) for key in ("sha256", "text"))):
                        raise ValueError(f"line {line_number} is not a {{'sha256', 'text'}} object")
                    rows.setdefault(row["sha256"], row["text"])
        except (OSError, UnicodeDecodeError, ValueError) as error:  # json.JSONDecodeError is a ValueError
            raise SertoolError(
                f"transcript cache file {path} is unreadable ({error}); delete it to transcribe again"
            ) from None
        return rows
