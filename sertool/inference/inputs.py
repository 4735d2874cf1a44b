"""What `predict` reads: audio files, folders, manifests, corpus splits; transcripts; long-audio windows."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from sertool.cache.scan import ScanCache
from sertool.core.errors import SertoolError
from sertool.core.io import SeenIds, printable, quoted, read_csv_records
from sertool.data.audio import SAMPLE_RATE, audio_info
from sertool.data.corpus import open_corpus
from sertool.data.records import ATTRIBUTES, Utterance
from sertool.data.report import LoadReport
from sertool.data.rows import read_headers
from sertool.guards.reads import MAX_TRANSCRIPT_BYTES, read_user_bytes
from sertool.inference.predictions import Predictions
from sertool.inference.windows import combine_windows, window_segments, window_spans

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
PREDICT_SPLIT = "predict"  # split name of utterances read from loose files
TRANSCRIPT_ID_COLUMNS = ("FileName", "id", "path")  # a --transcripts CSV names its files in one of these


def collect_inputs(paths: Sequence[str | Path], *, cache_dir: str | os.PathLike[str] | None = None,
                   ) -> tuple[list[Utterance], LoadReport]:
    """Utterances from files, folders (searched recursively for audio) and manifest CSVs, and the rows
    the manifests dropped.

    A loose file's id is its name; a file found in a folder is named by its path below that folder, so
    that ``a/x.wav`` and ``b/x.wav`` stay apart. A name that is not valid UTF-8 keeps its bytes as
    ``\\xNN`` escapes in the id (``printable``). Durations come from the headers, kept in the scan cache
    under ``cache_dir`` (None: the default) for folders and manifests.

    Raises:
        SertoolError: a path that does not exist, a folder without audio, unreadable audio, a link to
            nowhere, or two inputs with the same id.
    """
    utterances: list[Utterance] = []
    report = LoadReport()
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise SertoolError(f"{printable(str(path))}: no such file or folder")
        if path.is_dir():
            files = audio_files(path)
            if not files:
                raise SertoolError(f"{printable(str(path))}: no audio files ({', '.join(AUDIO_SUFFIXES)}) "
                                   "in this folder")
            for file, header in zip(files, read_headers(files, scan=ScanCache(cache_dir)), strict=True):
                if isinstance(header, Exception):
                    raise header
                sample_rate, num_frames, _ = header
                utterances.append(Utterance(id=printable(file.relative_to(path).as_posix()), audio_path=file,
                                            split=PREDICT_SPLIT, duration_s=num_frames / sample_rate))
        elif path.suffix.lower() == ".csv":
            manifest = open_corpus(path, cache_dir=cache_dir)
            utterances.extend(manifest.utterances)
            report.dropped.extend(manifest.report.dropped)
            report.warnings.extend(manifest.report.warnings)
        else:
            utterances.append(audio_file_utterance(path, printable(path.name)))
    seen = SeenIds("input id")
    for utt in utterances:
        seen.refuse_repeat(utt.id, printable(str(utt.audio_path)),
                           fix="predict them separately or give them distinct names")
    return utterances, report


def audio_files(folder: Path) -> list[Path]:
    """The audio files (by suffix) in ``folder`` and below, sorted by their path below it.

    Linked folders are followed, each real folder once (a link loop ends); a folder named like an audio
    file is searched like any other.

    Raises:
        SertoolError: a folder that cannot be listed, or a link with an audio suffix that points to nothing,
            naming it.
    """
    def unreadable(error: OSError) -> None:
        raise SertoolError(f"{printable(str(error.filename))}: cannot list the folder ({error.strerror})")

    found, seen = [], set()
    for root, folders, names in os.walk(folder, onerror=unreadable, followlinks=True):
        identity = os.stat(root)
        if (identity.st_dev, identity.st_ino) in seen:
            folders[:] = []
            continue
        seen.add((identity.st_dev, identity.st_ino))
        for name in names:
            file = Path(root) / name
            if file.suffix.lower() not in AUDIO_SUFFIXES:
                continue
            if not file.exists():
                raise SertoolError(f"{printable(str(file))}: a link to a file that does not exist "
                                   f"({printable(os.readlink(file))}); remove it or point it at the audio")
            found.append(file)
    return sorted(found, key=lambda file: file.relative_to(folder).as_posix())


def corpus_split(corpus: str | Path, split: str, *, cache_dir: str | os.PathLike[str] | None = None,
                 ) -> tuple[list[Utterance], LoadReport]:
    """The utterances of one split of a corpus (MSP-Podcast root or manifest), and what reading the
    corpus dropped (rows whose split is unknown until they parse, so the report covers the whole corpus).
    The scan's findings are kept under ``cache_dir`` (None: the default; see ``open_corpus``)."""
    opened = open_corpus(corpus, cache_dir=cache_dir)
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


def audio_file_utterance(path: Path, utt_id: str) -> Utterance:
    """An audio file to predict, as a whole-file utterance named ``utt_id`` (duration from its header).

    Raises:
        SertoolError: missing or unreadable audio, naming the file.
    """
    sample_rate, num_frames, _ = audio_info(path)
    return Utterance(id=utt_id, audio_path=path, split=PREDICT_SPLIT, duration_s=num_frames / sample_rate)


def attach_transcripts(utterances: Sequence[Utterance], source: str | Path) -> list[Utterance]:
    """Set transcripts from a folder of ``<stem>.txt`` files or a CSV with ``FileName``/``id``/``path`` and
    ``transcript`` columns; utterances without one keep what they had.

    A CSV row belongs to the utterance with its id, else to the one utterance with its file name (a row
    ``/data/x.wav`` to the input ``x.wav``); a folder's ``<stem>.txt`` to the utterance with that stem. A
    transcript is never given to two utterances, nor an utterance one of several rows: the match would be
    a guess.

    Raises:
        SertoolError: the source is missing; the CSV lacks the columns, has a damaged line, an empty id or
            an id read twice (naming both lines); or a match by file name is ambiguous (naming the ids).
    """
    source = Path(source).expanduser()
    if source.is_dir():
        texts = _folder_transcripts(utterances, source)
    elif source.exists():  # a CSV; the reader refuses anything but a regular file of bounded size
        texts = _csv_transcripts(utterances, source)
    else:
        raise SertoolError(f"--transcripts {source}: no such folder or CSV file")
    return [dataclasses.replace(utt, transcript=texts.get(utt.id, utt.transcript)) for utt in utterances]


def _folder_transcripts(utterances: Sequence[Utterance], folder: Path) -> dict[str, str]:
    """Utterance id → the one-line text of ``folder/<stem>.txt``, for the utterances that have one."""
    texts: dict[str, str] = {}
    claimed: dict[str, str] = {}
    for utt in utterances:
        file = folder / f"{Path(utt.id).stem}.txt"
        if file.is_file():
            _claim(claimed, file.name, utt.id, folder)
            raw = read_user_bytes(file, what="transcript", max_bytes=MAX_TRANSCRIPT_BYTES)
            texts[utt.id] = " ".join(raw.decode("utf-8", errors="replace").split())
    return texts


def _csv_transcripts(utterances: Sequence[Utterance], table: Path) -> dict[str, str]:
    """Utterance id → the one-line text of its row of the CSV ``table`` (rows with an empty text skipped)."""
    rows: dict[str, str] = {}
    ids_by_name: dict[str, list[str]] = {}
    seen = SeenIds("id")
    for line, row in read_csv_records(table, [TRANSCRIPT_ID_COLUMNS, "transcript"], what="--transcripts CSV"):
        where = f"{table}:{line}"
        file_id = next(row[column] for column in TRANSCRIPT_ID_COLUMNS if column in row)
        if not file_id:
            raise SertoolError(f"{where}: the id is empty; name the file each transcript belongs to")
        seen.refuse_repeat(file_id, where, fix="keep one transcript per file")
        text = " ".join(row["transcript"].split())
        if text:
            rows[file_id] = text
            ids_by_name.setdefault(Path(file_id).name, []).append(file_id)
    texts: dict[str, str] = {}
    claimed: dict[str, str] = {}
    for utt in utterances:
        candidates = [utt.id] if utt.id in rows else ids_by_name.get(Path(utt.id).name, [])
        if len(candidates) > 1:
            raise SertoolError(f"--transcripts {table}: the rows of {', '.join(map(quoted, candidates))} all match "
                               f"{quoted(utt.id)} by file name; give its row the id {quoted(utt.id)}")
        if candidates:
            _claim(claimed, candidates[0], utt.id, table)
            texts[utt.id] = rows[candidates[0]]
    return texts


def _claim(claimed: dict[str, str], transcript: str, utt_id: str, source: Path) -> None:
    """Record that ``transcript`` goes to ``utt_id``, refusing a second utterance for it."""
    owner = claimed.setdefault(transcript, utt_id)
    if owner != utt_id:
        raise SertoolError(f"--transcripts {source}: {quoted(transcript)} matches both {quoted(owner)} and "
                           f"{quoted(utt_id)}; give a --transcripts CSV with one row per id")


@dataclasses.dataclass(frozen=True)
class Piece:
    """What `predict` runs the model on: a whole file, or one window of a long file.

    Attributes:
        file_id: the file's id (its row in the output).
        span: the window's ``(start, end)`` in samples at 16 kHz, or None for the whole file.
        utterance: the record the model reads (for a window, an utterance of its own with that span).
    """

    file_id: str
    span: tuple[int, int] | None
    utterance: Utterance


def check_windows(utterances: Sequence[Utterance], *, window_s: float, hop_s: float) -> None:
    """Refuse, before any work, a window/hop pair or a file that `windowed_pieces` would refuse later.

    Raises:
        SertoolError: a bad window or hop, or a file shorter than a prediction needs (naming it).
    """
    for utt in utterances:
        _spans(utt, window_s, hop_s)


def windowed_pieces(utterances: Sequence[Utterance], *, window_s: float, hop_s: float) -> Iterator[Piece]:
    """Each utterance as one piece or, when longer than ``window_s``, as one piece per window (``window_s``
    long, ``hop_s`` apart; see ``window_spans``), made lazily: the windows of a long file never exist all at
    once unless the caller keeps them.

    Raises:
        SertoolError: as ``check_windows``.
    """
    for utt in utterances:
        spans = _spans(utt, window_s, hop_s)
        if len(spans) == 1:
            yield Piece(utt.id, None, utt)
            continue
        for span in spans:
            window = utt.window(span[0] / SAMPLE_RATE, span[1] / SAMPLE_RATE, id=window_id(utt.id, span))
            yield Piece(utt.id, span, window)


class WindowMerger:
    """Collects the predictions of pieces, chunk by chunk, into one row per file plus a segment per window.

    A file's row is the duration-weighted mean of its windows (``combine_windows``); it is computed once
    every chunk has been added, from three numbers per window.
    """

    def __init__(self) -> None:
        self._rows: dict[str, np.ndarray] = {}
        self._windows: dict[str, list[tuple[tuple[int, int], np.ndarray]]] = {}
        self._attributes: tuple[str, ...] = ATTRIBUTES  # the predictor's (every chunk's)

    def add(self, pieces: Sequence[Piece], predictions: Predictions) -> None:
        """Record the predictions of ``pieces`` (``predictions`` holds a row for each piece's utterance id)."""
        self._attributes = predictions.attributes
        values = predictions.take([piece.utterance.id for piece in pieces]).values
        for piece, row in zip(pieces, values, strict=True):
            if piece.span is None:
                self._rows[piece.file_id] = row
            else:
                self._windows.setdefault(piece.file_id, []).append((piece.span, row))

    def result(self, utterances: Sequence[Utterance]) -> Predictions:
        """One row per utterance, in their order, with the segments of windowed files.

        Raises:
            KeyError: an utterance none of whose pieces was added (a programming error).
        """
        rows, segments = [], []
        for utt in utterances:
            windows = self._windows.get(utt.id)
            if windows is None:
                rows.append(self._rows[utt.id])
                continue
            spans = [span for span, _ in windows]
            values = np.array([row for _, row in windows])
            rows.append(combine_windows(spans, values))
            segments.extend(window_segments(utt.id, spans, values, sample_rate=SAMPLE_RATE))
        return Predictions([utt.id for utt in utterances], np.array(rows).reshape(-1, len(self._attributes)),
                           segments=segments, attributes=self._attributes)


def piece_count(utterances: Sequence[Utterance], *, window_s: float, hop_s: float) -> int:
    """How many pieces ``windowed_pieces`` cuts ``utterances`` into (counted from their durations, not made)."""
    return sum(len(_spans(utt, window_s, hop_s)) for utt in utterances)


def _spans(utt: Utterance, window_s: float, hop_s: float) -> list[tuple[int, int]]:
    num_samples = int(round(utt.duration_s * SAMPLE_RATE))
    return window_spans(num_samples, SAMPLE_RATE, window_s, hop_s, source=str(utt.audio_path))


def window_id(file_id: str, span: tuple[int, int]) -> str:
    """The id of one window of a file, e.g. ``talk.wav@192000`` (its first sample at 16 kHz)."""
    return f"{file_id}@{span[0]}"
