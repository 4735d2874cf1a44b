"""What every corpus reader builds: parsed rows, the utterances they become, and the ``Corpus`` they make.

The readers (``msp``, ``manifest``, ``importer``) import this module and ``corpus`` imports the readers,
so none of them imports another reader's module.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sertool.cache.scan import READ_THREADS, ScanCache
from sertool.core.errors import SertoolError
from sertool.core.io import SeenIds
from sertool.core.progress import task
from sertool.core.splits import SPLITS
from sertool.data.audio import audio_info
from sertool.data.records import Utterance
from sertool.data.report import LoadReport, Problem

Progress = Callable[[int, int], None]
# The LoadReport reasons of a row whose audio cannot be used (what `--on-bad-audio fail` refuses).
MISSING_AUDIO, UNREADABLE_AUDIO, EMPTY_AUDIO = "missing audio", "unreadable audio", "empty audio"
AUDIO_PROBLEMS = frozenset({MISSING_AUDIO, UNREADABLE_AUDIO, EMPTY_AUDIO})
DUPLICATE_ID = "duplicate id"  # a corpus keeps the first row of an id and drops the others (SeenIds)


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


def read_rows(table: Path, parse: Callable[[Path, LoadReport], list[Row]], report: LoadReport, *,
              scan: ScanCache) -> list[Row]:
    """The rows of a labels file or manifest, ``parse(table, report)``, parsed once and then taken from
    the scan cache while the file is unchanged (parsing MSP-Podcast's labels takes seconds, more than the
    rest of a warm start); the rows it dropped are added to ``report`` either way.

    Raises:
        SertoolError: whatever ``parse`` raises for an unusable file.
    """
    def parse_into_new_report(path: str) -> tuple[list[Row], list[Problem]]:
        own = LoadReport()
        return parse(table, own), own.dropped

    given = str(table)  # messages name the file as the user did; another spelling is another entry
    (result,) = scan.read([table], parse_into_new_report, errors=(), kind="tables", columns=(str,),
                          encode=lambda value: (json.dumps(_encode_rows(given, *value)),),
                          decode=lambda entry: _decode_rows(given, json.loads(entry[0])))
    assert not isinstance(result, Exception), "read_rows lets parse errors propagate (errors=())"
    rows, dropped = result
    report.dropped.extend(dropped)
    return rows


def _encode_rows(given: str, rows: list[Row], dropped: list[Problem]) -> list:
    names = list(rows[0].fields) if rows else []
    return [given, names, [[row.where, row.id, os.fspath(row.audio_path), *(row.fields[name] for name in names)]
                           for row in rows],
            [[problem.where, problem.reason, problem.detail, problem.split] for problem in dropped]]


def _decode_rows(given: str, entry: list) -> tuple[list[Row], list[Problem]]:
    if len(entry) != 4 or entry[0] != given:
        raise ValueError("rows of another spelling of the path")
    names = entry[1]
    rows = [Row(where=row[0], id=row[1], audio_path=Path(row[2]), fields=dict(zip(names, row[3:], strict=True)))
            for row in entry[2]]
    return rows, [Problem(*problem) for problem in entry[3]]


def build_utterances(rows: Sequence[Row], report: LoadReport, *, scan: ScanCache | None = None,
                     progress: Progress | None = None) -> list[Utterance]:
    """Turn parsed rows into utterances: drop repeated ids and rows whose audio is missing, unreadable or
    empty (each recorded in ``report``); durations come from the file headers (``read_headers``, through
    ``scan``; None: the default cache folder's)."""
    seen = SeenIds("id")
    unique = []
    for row in rows:
        repeat = seen.repeat_of(row.id, row.where)
        if repeat is not None:
            report.drop(row.where, DUPLICATE_ID, repeat, split=row.fields["split"])
        else:
            unique.append(row)

    utterances = []
    headers = read_headers([row.audio_path for row in unique], scan=scan, progress=progress)
    for row, header in zip(unique, headers, strict=True):
        if isinstance(header, Exception):  # a SertoolError: read_headers returns no other
            reason = MISSING_AUDIO if not row.audio_path.exists() else UNREADABLE_AUDIO
            report.drop(row.where, reason, str(header), split=row.fields["split"])
            continue
        sample_rate, num_frames, _ = header
        if num_frames == 0:
            report.drop(row.where, EMPTY_AUDIO, f"{row.audio_path} has no samples", split=row.fields["split"])
            continue
        utterances.append(Utterance(id=row.id, audio_path=row.audio_path, duration_s=num_frames / sample_rate,
                                    **row.fields))
    return utterances


def read_headers(paths: Sequence[str | os.PathLike[str]], *, scan: ScanCache | None = None,
                 progress: Progress | None = None) -> list[tuple[int, int, int] | Exception]:
    """``audio_info`` of each path, or the ``SertoolError`` it raised, in order.

    Headers of unchanged files come from the scan cache (``scan``; None: the default cache folder's); the
    others are read in parallel threads and recorded there. Without ``progress``, the scan is a progress
    task of its own (drawn where the command draws bars).
    """
    with (contextlib.nullcontext(progress) if progress else task(f"reading {len(paths):,} audio headers")) as update:
        return (scan or ScanCache()).read(
            paths, audio_info, errors=(SertoolError,), kind="audio-headers", columns=(int, int, int),
            decode=_decode_header, threads=READ_THREADS, progress=update)


def _decode_header(entry: tuple) -> tuple[int, int, int]:
    sample_rate, num_frames, num_channels = entry
    if not (sample_rate > 0 and num_frames >= 0 and num_channels > 0):
        raise ValueError(f"not an audio header: {entry!r}")
    return entry
