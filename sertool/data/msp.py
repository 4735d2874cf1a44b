"""Reader of the MSP-Podcast v1.12 layout: ``Audios/``, ``Labels/labels_consensus.csv``, ``Transcripts/``.

Any corpus laid out this way is read the same way; nothing here is specific to one release or to the
demo corpus.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from sertool.data.fields import BadValue, parse_class, parse_gender, parse_label, parse_speaker
from sertool.data.records import ATTRIBUTE_COLUMNS, MSP_LABELS_HEADER, SPLITS, UNLABELLED_SPLIT
from sertool.data.report import LoadReport
from sertool.data.rows import Corpus, Progress, Row, build_utterances
from sertool.errors import SertoolError
from sertool.io import DAMAGED_ROW, read_csv_records

MSP_LABELS = Path("Labels") / "labels_consensus.csv"  # under the root; its presence marks the layout
_TEST3_FILE = re.compile(r"test3", re.IGNORECASE)


def read_msp_podcast(root: str | Path, *, progress: Progress | None = None) -> Corpus:
    """Read an MSP-Podcast root.

    Rows with bad values are dropped and recorded in the report with their line number; a missing
    transcript is a warning. Audio files named like ``MSP-PODCAST_test3_0001.wav`` that have no labels
    row become unlabelled ``Test3`` utterances.

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

    listed = {row.id for row in rows}
    for name in sorted(_list_audio(audio_dir)):
        if name not in listed and _TEST3_FILE.search(name):
            rows.append(Row(where=str(audio_dir / name), id=name, audio_path=audio_dir / name,
                            fields={"split": UNLABELLED_SPLIT}))

    if transcript_dir.is_dir():
        for row in rows:
            row.fields["transcript"] = _read_transcript(transcript_dir / f"{Path(row.id).stem}.txt", report)
    return Corpus(root=root, kind="msp-podcast", utterances=build_utterances(rows, report, progress=progress), report=report)


def _parse_row(record: Mapping[str, str | None], where: str, audio_dir: Path) -> Row:
    name = (record["FileName"] or "").strip()
    if not name:
        raise BadValue("missing file name", "FileName is empty")
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
    return Row(where=where, id=name, audio_path=audio_dir / name, fields=fields)


def _list_audio(audio_dir: Path) -> list[str]:
    try:
        with os.scandir(audio_dir) as entries:
            return [entry.name for entry in entries if entry.name.lower().endswith(".wav")]
    except OSError as error:
        raise SertoolError(f"{audio_dir}: cannot list the folder ({error.strerror})") from None


def _read_transcript(path: Path, report: LoadReport) -> str | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        report.warn(str(path), "missing transcript", "no transcript file")
        return None
    except OSError as error:
        report.warn(str(path), "unreadable transcript", error.strerror or str(error))
        return None
    if not text:
        report.warn(str(path), "empty transcript", "the file is empty")
        return None
    return " ".join(text.split())  # one line of text, whatever the file's line breaks
