"""Predictions of A/V/D per file: the container every inference command passes around, and its CSV file.

The predictions CSV keeps the challenge's submission columns first, so any tool that reads a submission
reads it too; the other columns appear only when they carry something:

==========================================  ===================================================================
``FileName``                                the utterance id (MSP-Podcast's file name)
``EmoAct``, ``EmoVal``, ``EmoDom``          predicted arousal, valence, dominance on the 1..7 rater scale
                                            (not clipped: the submission writer clips)
``EmoAct_spread``, ... (ensembles)          standard deviation of the ensemble members' predictions, a
                                            per-file uncertainty on the same scale
``EmoAct_true``, ... (when labels known)    the rater means, beside the predictions for inspection
``start_s``, ``end_s`` (long audio)         empty on whole-file rows; on segment rows, the window's span in
                                            seconds. Segment rows follow their file's row and leave the
                                            spread and true columns empty.
==========================================  ===================================================================

On the unit scale (``predict --scale unit``) the value and spread columns are ``EmoAct_unit``, ... and
``EmoAct_unit_spread``, ...: the header says the scale, and no reader takes such a file for ratings.

A system of fewer attributes (``train.attributes``, e.g. a valence system) has the columns of its own alone
(``FileName,EmoVal``, ``EmoVal_spread``, ``EmoVal_true``): a file holds the attributes its header names.

``read_predictions`` accepts these files and plain submission files (only the first four columns).
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from sertool.core.constants import attribute_subset
from sertool.core.errors import SertoolError
from sertool.core.io import SeenIds, csv_text, read_csv_records
from sertool.data.records import ATTRIBUTE_COLUMNS, ATTRIBUTES, LABEL_MAX, LABEL_MIN

ID_COLUMN = "FileName"
VALUE_COLUMNS: tuple[str, ...] = tuple(ATTRIBUTE_COLUMNS[name] for name in ATTRIBUTES)  # EmoAct, EmoVal, EmoDom
SPREAD_SUFFIX, TRUE_SUFFIX = "_spread", "_true"  # a value column's spread (ensembles) and labels (evaluate)
SEGMENT_COLUMNS: tuple[str, ...] = ("start_s", "end_s")
# Six decimals: far below the raters' resolution, and a CSV round trip changes a CCC by < 1e-6.
FLOAT_DECIMALS = 6
# How many ids an error message lists before "and N more".
IDS_IN_MESSAGES = 5
# The scales predictions are given on: MSP-Podcast's 1..7 rater scale, or the model's own 0..1 output scale
# (``LabelScaling.to_unit`` of the ratings: the authors' raw sigmoid outputs for their released models).
SCALE_RATINGS = "ratings"
SCALE_UNIT = "unit"
SCALES = (SCALE_RATINGS, SCALE_UNIT)
UNIT_SUFFIX = "_unit"


@dataclass(frozen=True)
class Segment:
    """The prediction for one window of a long file.

    Attributes:
        id: the file's id (a ``Predictions.ids`` entry).
        start_s, end_s: the window's span in seconds from the start of the file.
        values: A, V, D on the 1..7 scale (those of the predictions' ``attributes``).
    """

    id: str
    start_s: float
    end_s: float
    values: tuple[float, ...]  # A, V, D (the attributes predicted)


@dataclass(frozen=True, eq=False)
class Predictions:
    """A/V/D predictions for a set of files, in ``ATTRIBUTES`` order.

    Attributes:
        ids: one id per row, unique.
        values: ``[N, len(attributes)]`` float64 on the 1..7 rater scale, a column per attribute (A, V, D).
        spread: the same shape: standard deviation of the ensemble members behind each value, or None for a
            single model.
        segments: per-window predictions of long files (``Segment.id`` is one of ``ids``); empty otherwise.
        scale: ``SCALE_RATINGS`` (values, spread and segments on 1..7) or ``SCALE_UNIT`` (on the model's 0..1
            scale, ``predictor.on_scale``).
        attributes: what the columns are, in ``ATTRIBUTES`` order: all three, or those of a system of fewer
            (``train.attributes``).

    Raises:
        ValueError: shapes disagree, ids repeat, a segment names an unknown id, or ``attributes`` are not a set
            of attributes in ``ATTRIBUTES`` order (programming errors: readers check user files first and name
            the row).
    """

    ids: list[str]
    values: np.ndarray
    spread: np.ndarray | None = None
    segments: list[Segment] = field(default_factory=list)
    scale: str = SCALE_RATINGS
    attributes: tuple[str, ...] = ATTRIBUTES

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", list(self.ids))
        object.__setattr__(self, "attributes", tuple(self.attributes))
        if self.attributes != attribute_subset(self.attributes):
            raise ValueError(f"Predictions: attributes {self.attributes} are not in the order {ATTRIBUTES}")
        width = len(self.attributes)
        object.__setattr__(self, "values", _as_rows(self.values, len(self.ids), "values", width))
        if self.spread is not None:
            object.__setattr__(self, "spread", _as_rows(self.spread, len(self.ids), "spread", width))
        if any(len(segment.values) != width for segment in self.segments):
            raise ValueError(f"Predictions: segments whose values are not one per attribute of {self.attributes}")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"Predictions: repeated ids {preview_ids(_repeated(self.ids))}")
        unknown = {segment.id for segment in self.segments} - set(self.ids)
        if unknown:
            raise ValueError(f"Predictions: segments of unknown ids {preview_ids(sorted(unknown))}")

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, ids: Sequence[str], *, source: str = "predictions") -> Predictions:
        """The rows of ``ids``, in that order, with their segments.

        Args:
            ids: the wanted ids; ids of ``self`` not in it are left out.
            source: how error messages name these predictions, e.g. their file.

        Raises:
            SertoolError: some of ``ids`` have no prediction (listing a few).
        """
        row_of = {file_id: row for row, file_id in enumerate(self.ids)}
        missing = [file_id for file_id in ids if file_id not in row_of]
        if missing:
            raise SertoolError(
                f"{source}: no prediction for {len(missing)} of {len(ids)} files: {preview_ids(missing)}; "
                "predict those files, or evaluate/ensemble the files the predictions cover"
            )
        rows = np.array([row_of[file_id] for file_id in ids], dtype=np.int64)
        wanted = set(ids)
        return Predictions(
            ids=list(ids),
            values=self.values[rows],
            spread=None if self.spread is None else self.spread[rows],
            segments=[segment for segment in self.segments if segment.id in wanted],
            attributes=self.attributes,
        )

    def columns(self, attributes: Sequence[str]) -> list[int]:
        """The columns of ``values`` that hold ``attributes`` (each of which these predictions must have)."""
        return [self.attributes.index(name) for name in attributes]


def align(members: Sequence[Predictions], *, names: Sequence[str] | None = None) -> list[Predictions]:
    """Put every member in the first member's id order, for ensembles of prediction files.

    Args:
        members: at least one; all must cover the same ids, in any order.
        names: how error messages name each member (e.g. its CSV path); default ``member 0``, ...

    Returns:
        The members, each reordered to ``members[0].ids``.

    Raises:
        SertoolError: a member lacks ids the first has, or has ids the first lacks (listing a few of each).
    """
    if not members:
        raise ValueError("align: no members")
    names = list(names) if names is not None else [f"member {index}" for index in range(len(members))]
    if len(names) != len(members):
        raise ValueError(f"align: {len(names)} names for {len(members)} members")
    reference_ids = members[0].ids
    reference = set(reference_ids)
    problems = []
    for name, member in zip(names[1:], members[1:], strict=True):
        present = set(member.ids)
        missing = [file_id for file_id in reference_ids if file_id not in present]
        extra = [file_id for file_id in member.ids if file_id not in reference]
        if missing:
            problems.append(f"{name} lacks {len(missing)} file(s) of {names[0]}: {preview_ids(missing)}")
        if extra:
            problems.append(f"{name} has {len(extra)} file(s) {names[0]} lacks: {preview_ids(extra)}")
    if problems:
        raise SertoolError(
            "ensemble members must predict the same files; " + "; ".join(problems)
            + ". Predict every member on the same split."
        )
    return [members[0]] + [member.take(reference_ids) for member in members[1:]]


def write_predictions(predictions: Predictions, handle: TextIO, *, labels: np.ndarray | None = None,
                      where: str = "standard output") -> None:
    """Write the predictions CSV (format in the module docstring) to an open text stream: a file being
    committed (``OutputPlan.writing``, ``writers.write_predictions_file``) or ``sys.stdout``.

    Args:
        predictions: what to write; rows keep its order.
        handle: the stream.
        labels: ``[N, len(predictions.attributes)]`` rater means of the predicted attributes in
            ``predictions.ids`` order, written as ``EmoAct_true``, ...
        where: how an error names the destination (the file's path).

    Raises:
        SertoolError: a value is not finite, or an id cannot be a CSV field (``sertool.core.io.csv_text``); nothing
            is written then.
    """
    if labels is not None:
        labels = _as_rows(labels, len(predictions), "labels", len(predictions.attributes))
    check_finite(predictions, where)
    handle.write(csv_text(*_csv_table(predictions, labels), destination=where))


def read_predictions(path: str | Path) -> Predictions:
    """Read a predictions CSV written by ``write_predictions``, or a plain submission file; its ``attributes``
    are those whose value columns (``EmoAct``, ``EmoVal``, ``EmoDom``) the header has.

    Raises:
        SertoolError: the file is unreadable, or has no value column, a value is not a finite number, a
            FileName repeats, or a segment row is malformed (naming the file and line).
    """
    return read_predictions_and_labels(path)[0]


def read_predictions_and_labels(path: str | Path) -> tuple[Predictions, np.ndarray | None]:
    """Like ``read_predictions``, also returning the ``*_true`` columns (``[N, len(attributes)]``) or None without
    them.

    Raises:
        SertoolError: as ``read_predictions``; also when only some ``*_true`` columns are present.
    """
    path = Path(path)
    hint = (f"a predictions file needs the header {','.join((ID_COLUMN, *VALUE_COLUMNS))} (or the value columns of "
            "the attributes it predicts)")
    return _parse_csv(read_csv_records(path, (ID_COLUMN, VALUE_COLUMNS), what="predictions file", hint=hint), path)


def check_rating_scale(predictions: Predictions, *, source: str) -> None:
    """Refuse predictions that are not on the 1..7 rater scale, e.g. a file on 0..1, -1..1 or 0..100.

    Predictors overshoot the scale a little (the baseline's ridge, foreign files; a sertool model's outputs
    are clipped to it), so single values outside 1..7 are fine; what no 1..7 predictor gives is a median
    outside 1..7, half its values off the scale (0..1 values have a median near 0.5, 0..100 values near
    50). A file on another scale inside 1..7 (1..5) cannot be told apart.

    Raises:
        SertoolError: naming ``source``, the attribute, and its median and range.
    """
    for column, name in enumerate(predictions.attributes):
        values = predictions.values[:, column]
        median = float(np.median(values)) if len(values) else LABEL_MIN
        if not LABEL_MIN <= median <= LABEL_MAX:
            raise SertoolError(
                f"{source}: its {name} values (median {median:.3g}, range {values.min():.3g} to {values.max():.3g}) "
                f"are not on the {LABEL_MIN:g}..{LABEL_MAX:g} rater scale of sertool's predictions; map a file on "
                f"0..1 onto it first ({LABEL_MIN:g} + {LABEL_MAX - LABEL_MIN:g}x)"
            )


def check_finite(predictions: Predictions, where: str | Path) -> None:
    """Refuse to write predictions whose values, spread or segments are not all finite: no file or stream
    sertool writes holds NaN or infinity.

    Raises:
        SertoolError: naming ``where`` (the destination) and a few of the files concerned.
    """
    rows = ~np.isfinite(predictions.values).all(axis=1)
    if predictions.spread is not None:
        rows |= ~np.isfinite(predictions.spread).all(axis=1)
    bad = [file_id for file_id, row_bad in zip(predictions.ids, rows, strict=True) if row_bad]
    bad_segments = {segment.id for segment in predictions.segments if not np.all(np.isfinite(segment.values))}
    bad += sorted(bad_segments - set(bad))
    if bad:
        raise SertoolError(f"{where}: predictions for {len(bad)} file(s) are not finite numbers ({preview_ids(bad)}); "
                           "nothing was written")


def preview_ids(ids: Sequence[str], limit: int = IDS_IN_MESSAGES) -> str:
    """``a, b, c and 12 more``: enough ids for an error message to be actionable, never thousands."""
    shown = ", ".join(ids[:limit])
    return shown if len(ids) <= limit else f"{shown} and {len(ids) - limit} more"


def format_value(value: float) -> str:
    """A number as every sertool CSV writes it: fixed ``FLOAT_DECIMALS`` decimals."""
    return f"{value:.{FLOAT_DECIMALS}f}"


def segments_by_id(segments: Sequence[Segment]) -> dict[str, list[Segment]]:
    """Segments grouped by file id, each group in time order."""
    grouped: dict[str, list[Segment]] = {}
    for segment in segments:
        grouped.setdefault(segment.id, []).append(segment)
    for group in grouped.values():
        group.sort(key=lambda segment: (segment.start_s, segment.end_s))
    return grouped


def _csv_table(predictions: Predictions, labels: np.ndarray | None) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the predictions CSV (format in the module docstring)."""
    has_segments = bool(predictions.segments)
    suffix = UNIT_SUFFIX if predictions.scale == SCALE_UNIT else ""
    value_columns = [ATTRIBUTE_COLUMNS[name] for name in predictions.attributes]
    header = [ID_COLUMN, *(column + suffix for column in value_columns)]
    if predictions.spread is not None:
        header += [f"{column}{suffix}{SPREAD_SUFFIX}" for column in value_columns]
    if labels is not None:
        header += [column + TRUE_SUFFIX for column in value_columns]
    if has_segments:
        header += SEGMENT_COLUMNS
    # Columns a segment row leaves empty: spread and true values belong to whole files.
    empty_per_segment = len(header) - 1 - len(value_columns) - len(SEGMENT_COLUMNS)
    segments_of = segments_by_id(predictions.segments)
    rows = []
    for row, name in enumerate(predictions.ids):
        cells = [name, *map(format_value, predictions.values[row])]
        if predictions.spread is not None:
            cells += map(format_value, predictions.spread[row])
        if labels is not None:
            cells += map(format_value, labels[row])
        if has_segments:
            cells += ["", ""]
        rows.append(cells)
        for segment in segments_of.get(name, []):
            rows.append([name, *map(format_value, segment.values), *[""] * empty_per_segment,
                         format_value(segment.start_s), format_value(segment.end_s)])
    return header, rows


def _parse_csv(records: Iterator[tuple[int, dict[str, str]]], path: Path) -> tuple[Predictions, np.ndarray | None]:
    has_spread = has_labels = has_segments = None
    attributes: tuple[str, ...] = ATTRIBUTES
    value_columns: list[str] = []
    spread_columns: list[str] = []
    true_columns: list[str] = []
    ids: list[str] = []
    seen = SeenIds(ID_COLUMN)
    values, spread, labels, segments = [], [], [], []
    for line, record in records:
        where = f"{path}:{line}"
        if has_spread is None:  # the first row tells which attributes and optional column groups the header has
            attributes = tuple(name for name in ATTRIBUTES if ATTRIBUTE_COLUMNS[name] in record)
            value_columns = [ATTRIBUTE_COLUMNS[name] for name in attributes]
            spread_columns = [column + SPREAD_SUFFIX for column in value_columns]
            true_columns = [column + TRUE_SUFFIX for column in value_columns]
            has_spread, has_labels, has_segments = (_optional_group(record, group, path)
                                                    for group in (spread_columns, true_columns, SEGMENT_COLUMNS))
        name = _row_id(record, where)
        row_values = _numbers(record, value_columns, where)
        if has_segments and any((record.get(column) or "").strip() for column in SEGMENT_COLUMNS):
            segments.append((_segment(record, name, row_values, where), where))
            continue
        seen.refuse_repeat(name, where, fix="keep one row per file")
        ids.append(name)
        values.append(row_values)
        if has_spread:
            spread.append(_numbers(record, spread_columns, where))
        if has_labels:
            labels.append(_numbers(record, true_columns, where))
    if not ids:
        raise SertoolError(f"{path}: no prediction rows below the header")
    known = set(ids)
    for segment, where in segments:
        if segment.id not in known:
            raise SertoolError(f"{where}: segment row of {segment.id}, which has no whole-file row")
    predictions = Predictions(
        ids=ids,
        values=np.array(values),
        spread=np.array(spread) if has_spread else None,
        segments=[segment for segment, _ in segments],
        attributes=attributes,
    )
    return predictions, (np.array(labels) if has_labels else None)


def _row_id(record: dict[str, str], where: str) -> str:
    name = record.get(ID_COLUMN) or ""  # as read: a quoted id keeps its spaces
    if not name:
        raise SertoolError(f"{where}: {ID_COLUMN} is empty")
    return name


def _segment(record: dict[str, str], name: str, values: list[float], where: str) -> Segment:
    """A segment row: its span (0 <= start_s < end_s) and values."""
    start_s, end_s = _numbers(record, SEGMENT_COLUMNS, where)
    if not 0 <= start_s < end_s:
        raise SertoolError(f"{where}: segment start_s={start_s:g}, end_s={end_s:g} is not a span "
                           "(need 0 <= start_s < end_s)")
    return Segment(name, start_s, end_s, tuple(values))


def _optional_group(columns: Collection[str], group: Sequence[str], path: Path) -> bool:
    """Whether the file has a column group; a partial group is an error rather than silently ignored."""
    present = [column for column in group if column in columns]
    if present and len(present) != len(group):
        absent = [column for column in group if column not in columns]
        raise SertoolError(f"{path}: has {', '.join(present)} but not {', '.join(absent)}; "
                           "give all of them or none")
    return bool(present)


def _numbers(record: Mapping[str, str | None], columns: Sequence[str], where: str) -> list[float]:
    numbers = []
    for column in columns:
        text = (record.get(column) or "").strip()
        try:
            value = float(text)
        except ValueError:
            raise SertoolError(f"{where}: {column}={text!r} is not a number") from None
        if not math.isfinite(value):
            raise SertoolError(f"{where}: {column}={text} is not finite")
        numbers.append(value)
    return numbers


def _as_rows(array: np.ndarray, num_rows: int, name: str, width: int) -> np.ndarray:
    rows = np.asarray(array, dtype=np.float64)
    if rows.shape != (num_rows, width):
        raise ValueError(f"{name}: expected shape ({num_rows}, {width}), got {rows.shape}")
    return rows


def _repeated(ids: Sequence[str]) -> list[str]:
    return [name for name, count in Counter(ids).items() if count > 1]
