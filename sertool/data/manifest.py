"""sertool manifests: one CSV row per utterance, for corpora not in MSP-Podcast layout.

Columns (only ``path`` and ``split`` are required; the order does not matter):

======================  =====================================================================
``path``                audio file, absolute or relative to the manifest's folder
``split``               split name, e.g. ``Train``, ``Development``, ``Test1``
``id``                  utterance id (default: the audio file name); must be unique
``arousal``,            rater means on 1..7; empty where unknown. All three or none: a row with
``valence``,            only some of them is dropped.
``dominance``
``emo_class``           EmoClass code (``N``, ``H``, ...) or name (``neutral``); empty: unknown
``speaker``             speaker label; empty or ``Unknown``: unknown
``gender``              ``Male``/``Female`` (also ``m``/``f``); anything else: unknown
``transcript``          one line of text; empty: none
======================  =====================================================================
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from sertool.cache.scan import ScanCache
from sertool.core.io import DAMAGED_ROW, csv_text, read_csv_records
from sertool.data.fields import BadValue, parse_class, parse_gender, parse_label, parse_speaker
from sertool.data.records import ATTRIBUTES, Utterance
from sertool.data.report import LoadReport
from sertool.data.rows import Corpus, Progress, Row, build_utterances, read_rows

MANIFEST_NAME = "manifest.csv"  # what a folder given as --corpus holds when it is a manifest corpus
MANIFEST_COLUMNS: tuple[str, ...] = ("id", "path", "split", *ATTRIBUTES, "emo_class", "speaker", "gender", "transcript")
REQUIRED_COLUMNS: tuple[str, ...] = ("path", "split")


def read_manifest(path: str | Path, *, progress: Progress | None = None, scan: ScanCache | None = None) -> Corpus:
    """Read a manifest CSV; bad rows are dropped and recorded with their line number. The parsed rows and
    the audio headers of unchanged files come from the scan cache (``scan``; None: the default cache
    folder's; see ``sertool.cache.scan``).

    Raises:
        SertoolError: the file is unreadable or lacks a required column.
    """
    path = Path(path)
    report = LoadReport()
    scan = scan or ScanCache()
    rows = read_rows(path, _parse_manifest, report, scan=scan)
    utterances = build_utterances(rows, report, scan=scan, progress=progress)
    return Corpus(root=path, kind="manifest", utterances=utterances, report=report)


def _parse_manifest(path: Path, report: LoadReport) -> list[Row]:
    """The rows of the manifest ``path``; bad ones are dropped into ``report``."""
    base = path.parent
    rows = []
    hint = (f"a manifest needs {', '.join(REQUIRED_COLUMNS)} and may have "
            f"{', '.join(c for c in MANIFEST_COLUMNS if c not in REQUIRED_COLUMNS)}")
    for line, record in read_csv_records(
        path, REQUIRED_COLUMNS, what="manifest", hint=hint,
        on_damage=lambda line, detail: report.drop(f"{path}:{line}", DAMAGED_ROW, detail),
    ):
        where = f"{path}:{line}"
        try:
            rows.append(parse_manifest_row(record, base, where))
        except BadValue as error:
            report.drop(where, error.reason, error.detail, split=(record.get("split") or "").strip() or None)
    return rows


def parse_manifest_row(record: Mapping[str, str | None], base: Path, where: str) -> Row:
    """Parse one manifest row (column name → text); relative paths are taken from ``base``.

    Raises:
        BadValue: a value that makes the row unusable.
    """
    audio = record.get("path") or ""  # as read: a quoted path keeps its spaces
    if not audio:
        raise BadValue("missing path", "path is empty")
    split = (record.get("split") or "").strip()
    if not split:
        raise BadValue("unknown split", "split is empty")
    labels = {name: parse_label(record.get(name), name, required=False) for name in ATTRIBUTES}
    present = [name for name, value in labels.items() if value is not None]
    if present and len(present) != len(ATTRIBUTES):
        absent = ", ".join(name for name in ATTRIBUTES if labels[name] is None)
        raise BadValue("missing label", f"{absent} empty while {', '.join(present)} given")
    audio_path = Path(audio) if os.path.isabs(audio) else base / audio
    transcript = " ".join((record.get("transcript") or "").split()) or None
    fields = dict(labels, split=split, emo_class=parse_class(record.get("emo_class")),
                  speaker=parse_speaker(record.get("speaker")), gender=parse_gender(record.get("gender")),
                  transcript=transcript)
    utterance_id = record.get("id") or audio_path.name
    return Row(where=where, id=utterance_id, audio_path=audio_path, fields=fields)


def write_manifest(utterances: Sequence[Utterance], handle: IO[str], *, folder: Path, where: str | Path) -> None:
    """Write ``utterances`` as a manifest to ``handle`` (a file being committed through ``OutputPlan.writing``),
    audio paths relative to ``folder``, the folder the manifest goes to; ``where`` names it in messages.

    Raises:
        SertoolError: an id or path that cannot be a CSV field (``sertool.core.io.csv_text``; nothing is written).
    """
    base = folder.resolve()

    def cells(utt: Utterance) -> list[str]:
        values = {name: getattr(utt, name) for name in MANIFEST_COLUMNS if name != "path"}
        values["path"] = os.path.relpath(Path(utt.audio_path).resolve(), base)
        return ["" if values[name] is None else str(values[name]) for name in MANIFEST_COLUMNS]

    handle.write(csv_text(MANIFEST_COLUMNS, map(cells, utterances), destination=where))
