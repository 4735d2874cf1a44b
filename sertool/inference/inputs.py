"""What `predict` reads: audio files, folders, manifests, corpus splits; transcripts; long-audio windows."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sertool.data.audio import SAMPLE_RATE, audio_info
from sertool.data.corpus import open_corpus
from sertool.data.records import Utterance
from sertool.data.report import LoadReport
from sertool.errors import SertoolError
from sertool.io import read_csv_records
from sertool.inference.predictions import Predictions
from sertool.inference.windows import combine_windows, window_segments, window_spans

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
PREDICT_SPLIT = "predict"  # split name of utterances read from loose files
TRANSCRIPT_ID_COLUMNS = ("FileName", "id", "path")  # a --transcripts CSV names its files in one of these


def collect_inputs(paths: Sequence[str | Path]) -> tuple[list[Utterance], LoadReport]:
    """Utterances from files, folders (searched recursively for audio) and manifest CSVs, and the rows
    the manifests dropped.

    A loose file's id is its name; a file found in a folder is named by its path below that folder, so
    that ``a/x.wav`` and ``b/x.wav`` stay apart. Durations come from the headers.

    Raises:
        SertoolError: a path that does not exist, a folder without audio, unreadable audio, or two inputs
            with the same id.
    """
    utterances: list[Utterance] = []
    report = LoadReport()
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise SertoolError(f"{path}: no such file or folder")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            if not files:
                raise SertoolError(f"{path}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder")
            utterances.extend(_loose(file, file.relative_to(path).as_posix()) for file in files)
        elif path.suffix.lower() == ".csv":
            manifest = open_corpus(path)
            utterances.extend(manifest.utterances)
            report.dropped.extend(manifest.report.dropped)
            report.warnings.extend(manifest.report.warnings)
        else:
            utterances.append(_loose(path, path.name))
    seen: dict[str, Path] = {}
    for utt in utterances:
        if utt.id in seen:
            raise SertoolError(f"two inputs share the id {utt.id}: {seen[utt.id]} and {utt.audio_path}; "
                               "predict them separately or give them distinct names")
        seen[utt.id] = utt.audio_path
    return utterances, report


def corpus_split(corpus: str | Path, split: str) -> tuple[list[Utterance], LoadReport]:
    """The utterances of one split of a corpus (MSP-Podcast root or manifest), and what reading the
    corpus dropped (rows whose split is unknown until they parse, so the report covers the whole corpus)."""
    opened = open_corpus(corpus)
    return opened.split(split), opened.report


def require_complete(report: LoadReport, split: str | None, *, purpose: str) -> None:
    """Refuse when rows of ``split`` (None: of any split), or rows whose split could not be read, were
    dropped: a submission must cover every file, and a silently shorter one would be mistaken for a
    complete one.

    Raises:
        SertoolError: naming the first such row.
    """
    concerned = [problem for problem in report.dropped if split is None or problem.split in (None, split)]
    if concerned:
        raise SertoolError(f"{purpose}: {len(concerned)} row(s) that may belong to {split or 'the input'} were "
                           "dropped — first: "
                           f"{concerned[0]}; fix those rows so that every file is predicted")


def _loose(path: Path, utt_id: str) -> Utterance:
    sample_rate, num_frames, _ = audio_info(path)
    return Utterance(id=utt_id, audio_path=path, split=PREDICT_SPLIT, duration_s=num_frames / sample_rate)


def attach_transcripts(utterances: Sequence[Utterance], source: str | Path) -> list[Utterance]:
    """Set transcripts from a folder of ``<stem>.txt`` files or a CSV with ``FileName``/``id`` and
    ``transcript`` columns; utterances without one keep what they had.

    Raises:
        SertoolError: the source is missing, or the CSV lacks the columns or has a damaged line.
    """
    source = Path(source).expanduser()
    if source.is_dir():
        texts = {}
        for utt in utterances:
            file = source / f"{Path(utt.id).stem}.txt"
            if file.is_file():
                texts[utt.id] = " ".join(file.read_text(encoding="utf-8", errors="replace").split())
    elif source.is_file():
        texts = {}
        for _, row in read_csv_records(source, [TRANSCRIPT_ID_COLUMNS, "transcript"], what="--transcripts CSV"):
            file_id = next(row[column] for column in TRANSCRIPT_ID_COLUMNS if column in row)
            text = " ".join(row["transcript"].split())
            if text:
                texts[Path(file_id.strip()).name] = text
    else:
        raise SertoolError(f"--transcripts {source}: no such folder or CSV file")
    return [dataclasses.replace(utt, transcript=texts.get(utt.id, texts.get(Path(utt.id).name, utt.transcript)))
            for utt in utterances]


@dataclasses.dataclass
class Windowing:
    """How long files were cut: ``spans[file id]`` in samples at 16 kHz, for files of several windows."""

    spans: dict[str, list[tuple[int, int]]]

    def merge(self, utterances: Sequence[Utterance], windowed: Predictions) -> Predictions:
        """One row per file (the duration-weighted mean of its windows) plus a segment per window."""
        rows, segments = [], []
        for utt in utterances:
            spans = self.spans.get(utt.id)
            if spans is None:
                rows.append(windowed.take([utt.id]).values[0])
                continue
            values = windowed.take([window_id(utt.id, span) for span in spans]).values
            rows.append(combine_windows(spans, values))
            segments.extend(window_segments(utt.id, spans, values, sample_rate=SAMPLE_RATE))
        return Predictions([utt.id for utt in utterances], np.array(rows).reshape(-1, 3), segments=segments)


def split_windows(utterances: Sequence[Utterance], *, window_s: float, hop_s: float) -> tuple[list[Utterance], Windowing]:
    """Cut utterances longer than ``window_s`` into windows (``offset_s`` / ``duration_s`` records).

    Raises:
        SertoolError: an utterance shorter than the minimum a prediction needs, or a bad window/hop.
    """
    pieces, spans_of = [], {}
    for utt in utterances:
        num_samples = int(round(utt.duration_s * SAMPLE_RATE))
        spans = window_spans(num_samples, SAMPLE_RATE, window_s, hop_s, source=str(utt.audio_path))
        if len(spans) == 1:
            pieces.append(utt)
            continue
        spans_of[utt.id] = spans
        pieces.extend(dataclasses.replace(utt, id=window_id(utt.id, span), offset_s=span[0] / SAMPLE_RATE,
                                          duration_s=(span[1] - span[0]) / SAMPLE_RATE) for span in spans)
    return pieces, Windowing(spans_of)


def window_id(file_id: str, span: tuple[int, int]) -> str:
    """The id of one window of a file, e.g. ``talk.wav@12.000``."""
    return f"{file_id}@{span[0] / SAMPLE_RATE:.3f}"
