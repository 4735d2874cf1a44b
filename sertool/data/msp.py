"""Reader of the MSP-Podcast v1.12 layout: ``Audios/``, ``Labels/labels_consensus.csv``, ``Transcripts/``.

Any corpus laid out this way is read the same way; nothing here is specific to one release or to the
demo corpus.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from sertool.cache.scan import READ_THREADS, ScanCache
from sertool.core.errors import SertoolError
from sertool.core.io import DAMAGED_ROW, read_csv_records
from sertool.core.splits import SPLITS, UNLABELLED_SPLIT
from sertool.data.fields import BadValue, parse_class, parse_gender, parse_label, parse_speaker
from sertool.data.records import ATTRIBUTE_COLUMNS, MSP_LABELS_HEADER
from sertool.data.report import LoadReport
from sertool.data.rows import Corpus, Progress, Row, build_utterances, read_rows
from sertool.guards.reads import MAX_TRANSCRIPT_BYTES, inside, read_user_bytes

MSP_LABELS = Path("Labels") / "labels_consensus.csv"  # under the root; its presence marks the layout
_TEST3_FILE = re.compile(r"test3", re.IGNORECASE)


def read_msp_podcast(root: str | Path, *, progress: Progress | None = None, scan: ScanCache | None = None) -> Corpus:
    """Read an MSP-Podcast root.

    Rows with bad values are dropped and recorded in the report with their line number; a missing
    transcript is a warning. Audio files named like ``MSP-PODCAST_test3_0001.wav`` that have no labels
    row become unlabelled ``Test3`` utterances. Audio headers, transcripts and the parsed labels of
    unchanged files come from the scan cache (``scan``; None: the default cache folder's; see
    ``sertool.cache.scan``).

    Raises:
        SertoolError: the labels file is unreadable or lacks a required column, or ``Audios/`` is missing.
    """
    root = Path(root)
    labels_path = root / MSP_LABELS
    audio_dir = root / "Audios"
    transcript_dir = root / "Transcripts"
    if not audio_dir.is_dir():
        raise SertoolError(f"{audio_dir}: no such folder (an MSP-Podcast root holds Audios/, Labels/, Transcripts/)")
    report = LoadReport()
    if not transcript_dir.is_dir():
        report.warn(str(transcript_dir), "no transcripts", "folder missing: text-based (MM) systems will need ASR")

    scan = scan or ScanCache()
    # The listings of Audios/ (unlabelled Test3 files) and Transcripts/ (which transcripts exist) are part of
    # the result: a file added or removed there changes the folder's stat.
    scan.depend_on([os.fspath(audio_dir), os.fspath(transcript_dir)])
    rows = read_rows(labels_path, _parse_labels, report, scan=scan)
    listed = {row.id for row in rows}
    for name in sorted(_list_audio(audio_dir)):
        if name not in listed and _TEST3_FILE.search(name):
            rows.append(Row(where=str(audio_dir / name), id=name, audio_path=audio_dir / name,
                            fields={"split": UNLABELLED_SPLIT}))

    if transcript_dir.is_dir():
        # Strings, not Paths: building 150,000 Path objects costs more than reading the cached transcripts.
        folder = os.fspath(transcript_dir)
        paths = [os.path.join(folder, os.path.splitext(row.id)[0] + ".txt") for row in rows]
        texts = scan.read(paths, _read_transcript, errors=(OSError,), kind="transcripts", columns=(str,),
                          encode=lambda text: (text,), decode=lambda entry: entry[0], threads=READ_THREADS)
        for row, path, text in zip(rows, paths, texts, strict=True):
            row.fields["transcript"] = _transcript_or_warning(path, text, report)
    utterances = build_utterances(rows, report, scan=scan, progress=progress)
    return Corpus(root=root, kind="msp-podcast", utterances=utterances, report=report)


def _parse_labels(labels_path: Path, report: LoadReport) -> list[Row]:
    """The rows of ``Labels/labels_consensus.csv``; bad ones are dropped into ``report``."""
    audio_dir = labels_path.parent.parent / "Audios"
    rows = []
    for line, record in read_csv_records(
        labels_path, MSP_LABELS_HEADER, what="labels file", hint=f"the header must be {','.join(MSP_LABELS_HEADER)}",
        on_damage=lambda line, detail: report.drop(f"{labels_path}:{line}", DAMAGED_ROW, detail),
    ):
        where = f"{labels_path}:{line}"
        try:
            rows.append(_parse_row(record, where, audio_dir))
        except BadValue as error:
            report.drop(where, error.reason, error.detail, split=(record.get("Split_Set") or "").strip() or None)
    return rows


def _parse_row(record: Mapping[str, str | None], where: str, audio_dir: Path) -> Row:
    name = record["FileName"] or ""  # as read: a quoted name keeps its spaces
    if not name:
        raise BadValue("missing file name", "FileName is empty")
    try:  # the labels file names files inside Audios/ (and Transcripts/), never anywhere else
        audio_path = inside(audio_dir, name, what="FileName")
    except SertoolError as error:
        raise BadValue("file name outside the corpus", str(error)) from None
    split = (record["Split_Set"] or "").strip()
    if split not in SPLITS:
        raise BadValue("unknown split", f"Split_Set {split!r} is not one of {', '.join(SPLITS)}")
    required = split != UNLABELLED_SPLIT
    fields: dict[str, object] = {
        attribute: parse_label(record[column], column, required=required)
        for attribute, column in ATTRIBUTE_COLUMNS.items()
    }
    fields.update(
        split=split,
        emo_class=parse_class(record["EmoClass"]),
        speaker=parse_speaker(record["SpkrID"]),
        gender=parse_gender(record["Gender"]),
    )
    return Row(where=where, id=name, audio_path=audio_path, fields=fields)


def _list_audio(audio_dir: Path) -> list[str]:
    try:
        with os.scandir(audio_dir) as entries:
            return [entry.name for entry in entries if entry.name.lower().endswith(".wav")]
    except OSError as error:
        raise SertoolError(f"{audio_dir}: cannot list the folder ({error.strerror})") from None


def _read_transcript(path: str) -> str:
    """The transcript in ``path`` as one line of text ("" for an empty file), whatever its line breaks.

    Raises:
        OSError: the file is missing or unreadable.
    """
    try:
        raw = read_user_bytes(path, what="transcript", max_bytes=MAX_TRANSCRIPT_BYTES)
    except SertoolError as error:  # missing (a warning of its own), or a folder, a pipe, an oversized file
        if not os.path.lexists(path):
            raise FileNotFoundError(path) from None
        raise OSError(str(error)) from None
    return " ".join(raw.decode("utf-8", errors="replace").split())


def _transcript_or_warning(path: str, text: str | Exception, report: LoadReport) -> str | None:
    """The transcript, or None with a warning in ``report`` where the file is missing, unreadable or empty."""
    if isinstance(text, FileNotFoundError):
        report.warn(path, "missing transcript", "no transcript file")
    elif isinstance(text, Exception):  # an OSError: the read lets no other through
        report.warn(path, "unreadable transcript", getattr(text, "strerror", None) or str(text))
    elif not text:
        report.warn(path, "empty transcript", "the file is empty")
    else:
        return text
    return None
