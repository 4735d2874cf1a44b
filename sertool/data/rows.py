"""What every corpus reader builds: parsed rows, the utterances they become, and the ``Corpus`` they make.

The readers (``msp``, ``manifest``, ``importer``) import this module and ``corpus`` imports the readers,
so none of them imports another reader's module.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sertool.data.audio import audio_info
from sertool.data.records import SPLITS, Utterance
from sertool.data.report import LoadReport
from sertool.errors import SertoolError
from sertool.progress import task

# Header reads are I/O-bound (often on network storage); threads overlap the waits.
_HEADER_READ_THREADS = 8

Progress = Callable[[int, int], None]
# The LoadReport reasons of a row whose audio cannot be used (what `--on-bad-audio fail` refuses).
MISSING_AUDIO, UNREADABLE_AUDIO, EMPTY_AUDIO = "missing audio", "unreadable audio", "empty audio"
AUDIO_PROBLEMS = frozenset({MISSING_AUDIO, UNREADABLE_AUDIO, EMPTY_AUDIO})


@dataclass
class Corpus:
    """Utterances of one corpus plus what reading it dropped or warned about."""

    root: Path
    kind: str  # "msp-podcast" or "manifest"
    utterances: list[Utterance]
    report: LoadReport = field(default_factory=LoadReport)

    def split(self, name: str) -> list[Utterance]:
        """The utterances of split ``name``.

        Raises:
            SertoolError: the corpus has no such split (the message lists those it has).
        """
        chosen = [utt for utt in self.utterances if utt.split == name]
        if not chosen:
            raise SertoolError(f"--split {name}: {self.root} has no utterances in that split; "
                               f"it has {', '.join(self.split_names()) or 'none'}")
        return chosen

    def split_names(self) -> list[str]:
        """Split names: MSP-Podcast's in their order, then any others in order of appearance."""
        present = dict.fromkeys(utt.split for utt in self.utterances)
        return [name for name in SPLITS if name in present] + [name for name in present if name not in SPLITS]


@dataclass
class Row:
    """A parsed row before its audio is checked: ``where`` names the file and line for messages."""

    where: str
    id: str
    audio_path: Path
    fields: dict  # the remaining Utterance fields (split, labels, class, speaker, gender, transcript)


def build_utterances(rows: Sequence[Row], report: LoadReport, *, progress: Progress | None = None) -> list[Utterance]:
    """Turn parsed rows into utterances: drop repeated ids and rows whose audio is missing, unreadable or
    empty (each recorded in ``report``); durations come from the file headers, read in parallel."""
    seen: dict[str, str] = {}
    unique = []
    for row in rows:
        if row.id in seen:
            report.drop(row.where, "duplicate id", f"{row.id} already appears at {seen[row.id]}", split=row.fields["split"])
        else:
            seen[row.id] = row.where
            unique.append(row)

    utterances = []
    for row, header in zip(unique, _read_headers([row.audio_path for row in unique], progress), strict=True):
        if isinstance(header, SertoolError):
            reason = MISSING_AUDIO if not row.audio_path.exists() else UNREADABLE_AUDIO
            report.drop(row.where, reason, str(header), split=row.fields["split"])
            continue
        sample_rate, num_frames, _ = header
        if num_frames == 0:
            report.drop(row.where, EMPTY_AUDIO, f"{row.audio_path} has no samples", split=row.fields["split"])
            continue
        utterances.append(Utterance(id=row.id, audio_path=row.audio_path, duration_s=num_frames / sample_rate, **row.fields))
    return utterances


def _read_headers(paths: Sequence[Path], progress: Progress | None) -> Iterable[tuple[int, int, int] | SertoolError]:
    """``audio_info`` of each path, or the error it raised, in order."""

    def probe(path: Path) -> tuple[int, int, int] | SertoolError:
        try:
            return audio_info(path)
        except SertoolError as error:
            return error

    with ThreadPoolExecutor(_HEADER_READ_THREADS) as pool, \
            (contextlib.nullcontext(progress) if progress else task(f"reading {len(paths):,} audio headers")) as update:
        for done, result in enumerate(pool.map(probe, paths), start=1):
            update(done, len(paths))
            yield result
