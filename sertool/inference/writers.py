"""Output formats for predictions, a registry keyed by name, and the challenge's submission file.

``WRITERS[name](predictions, handle, labels=..., where=...)`` writes to an open text stream;
``write_predictions_file`` writes a command's declared output file (``OutputPlan``) in the format its
suffix names, and ``READERS[name](path)`` reads the same format back. The CSV format is described in
``sertool.inference.predictions``. The JSON format, keyed by attribute name so that no reader has to know
an order::

    {"attributes": ["arousal", "valence", "dominance"],
     "scale": [1.0, 7.0],                              ([0.0, 1.0] with ``predict --scale unit``)
     "predictions": [
        {"id": "MSP-PODCAST_0001_0008.wav", "arousal": 3.1, "valence": 4.2, "dominance": 3.4,
         "spread": {"arousal": 0.1, ...},              (ensembles only)
         "true": {"arousal": 2.2, ...},                (when labels are known)
         "segments": [{"start_s": 0.0, "end_s": 8.0, "arousal": 3.0, ...}, ...]}   (long audio only)
     ]}

A system of fewer attributes (``train.attributes``) lists its own under ``"attributes"``, and each entry has
those alone. A submission needs all three: ``write_submission`` refuses predictions of fewer.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from sertool.core.constants import attribute_subset
from sertool.core.errors import SertoolError
from sertool.core.io import SeenIds, csv_text, load_json
from sertool.data.records import ATTRIBUTES, LABEL_MAX, LABEL_MIN
from sertool.guards.outputs import OutputPlan
from sertool.inference.predictions import (
    ID_COLUMN,
    SCALE_UNIT,
    VALUE_COLUMNS,
    Predictions,
    Segment,
    check_finite,
    format_value,
    preview_ids,
    read_predictions,
    segments_by_id,
    write_predictions,
)

Writer = Callable[..., None]


def write_json(predictions: Predictions, handle: TextIO, *, labels: np.ndarray | None = None,
               where: str = "standard output") -> None:
    """Write the JSON format (module docstring) to an open text stream.

    Args:
        predictions: what to write; entries keep its order. Floats are written exactly (no rounding).
        handle: the stream (a file being committed, or ``sys.stdout``).
        labels: ``[N, len(predictions.attributes)]`` rater means in ``predictions.ids`` order, written under
            ``"true"``.
        where: how an error names the destination.

    Raises:
        SertoolError: a value is not finite (before anything is written).
    """
    if labels is not None and np.shape(labels) != predictions.values.shape:
        raise ValueError(f"write_json: labels of shape {np.shape(labels)} for {len(predictions)} predictions")
    check_finite(predictions, where)
    segments_of = segments_by_id(predictions.segments)
    entries = []
    names = predictions.attributes
    for row, file_id in enumerate(predictions.ids):
        entry: dict[str, Any] = {"id": file_id, **_by_attribute(names, predictions.values[row])}
        if predictions.spread is not None:
            entry["spread"] = _by_attribute(names, predictions.spread[row])
        if labels is not None:
            entry["true"] = _by_attribute(names, labels[row])
        if file_id in segments_of:
            entry["segments"] = [{"start_s": segment.start_s, "end_s": segment.end_s,
                                  **_by_attribute(names, segment.values)} for segment in segments_of[file_id]]
        entries.append(entry)
    unit = predictions.scale == SCALE_UNIT
    document = {"attributes": list(names), "scale": [0.0, 1.0] if unit else [LABEL_MIN, LABEL_MAX],
                "predictions": entries}
    json.dump(document, handle, indent=1)
    handle.write("\n")


def read_json(path: str | Path) -> Predictions:
    """Read predictions written by ``write_json`` (the ``"true"`` values are not part of ``Predictions``), of the
    attributes its ``"attributes"`` lists (all three where it lists none).

    Raises:
        SertoolError: the file is unreadable, not JSON, its ``"attributes"`` are not attribute names, or an entry
            lacks a field or repeats an id (naming the entry).
    """
    path = Path(path)
    document = load_json(path, what="predictions file")
    entries = document.get("predictions") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise SertoolError(f"{path}: expected an object with a non-empty \"predictions\" list")
    if document.get("scale", [LABEL_MIN, LABEL_MAX]) != [LABEL_MIN, LABEL_MAX]:
        raise SertoolError(f"{path}: predictions on the scale {document['scale']}; sertool reads predictions on "
                           f"the {LABEL_MIN:g}..{LABEL_MAX:g} rater scale (predict --scale ratings)")
    names = _listed_attributes(document.get("attributes", list(ATTRIBUTES)), path)
    ids: list[str] = []
    seen = SeenIds("id")
    values, spread, segments = [], [], []
    for index, entry in enumerate(entries):
        where = f"{path}: predictions[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
            raise SertoolError(f"{where}: needs an \"id\" string")
        seen.refuse_repeat(entry["id"], where, fix="keep one entry per file")
        ids.append(entry["id"])
        values.append(_numbers(entry, names, where))
        if "spread" in entry:
            spread.append(_numbers(entry["spread"], names, f"{where}.spread"))
        for number, item in enumerate(entry.get("segments", [])):
            segment_where = f"{where}.segments[{number}]"
            start_s, end_s = _numbers(item, ("start_s", "end_s"), segment_where)
            if not 0 <= start_s < end_s:
                raise SertoolError(f"{segment_where}: start_s={start_s:g}, end_s={end_s:g} is not a span "
                                   "(need 0 <= start_s < end_s)")
            segments.append(Segment(entry["id"], start_s, end_s, tuple(_numbers(item, names, segment_where))))
    if spread and len(spread) != len(ids):
        raise SertoolError(f"{path}: \"spread\" is on {len(spread)} of {len(ids)} entries; "
                           "give it on all or none")
    return Predictions(ids=ids, values=np.array(values), spread=np.array(spread) if spread else None,
                       segments=segments, attributes=names)


def _listed_attributes(listed: Any, path: Path) -> tuple[str, ...]:
    """A predictions document's ``"attributes"``: attribute names, each once, in ``ATTRIBUTES`` order."""
    try:
        if not isinstance(listed, list) or listed != list(attribute_subset(listed)):
            raise ValueError(f"{listed!r} is not a list of attribute names in the order {', '.join(ATTRIBUTES)}")
    except ValueError as error:
        raise SertoolError(f"{path}: \"attributes\": {error}") from None
    return tuple(listed)


WRITERS: dict[str, Writer] = {"csv": write_predictions, "json": write_json}


def write_predictions_file(outputs: OutputPlan, path: Path, predictions: Predictions, *,
                           file_format: str | None = None, labels: np.ndarray | None = None) -> None:
    """Write ``predictions`` as the declared output ``path`` of ``outputs``, in ``file_format`` (default: the
    format ``path``'s suffix names).

    Raises:
        SertoolError: an unknown format, a value that is not finite (nothing written), or the commit fails.
    """
    writer = WRITERS[file_format or format_of(path)]
    with outputs.writing(path, newline="") as handle:
        writer(predictions, handle, labels=labels, where=str(path))
READERS: dict[str, Callable[[str | Path], Predictions]] = {"csv": read_predictions, "json": read_json}


def format_of(path: str | Path) -> str:
    """The registry name for a file, from its suffix (``.csv`` → ``csv``).

    Raises:
        SertoolError: the suffix names no known format.
    """
    name = Path(path).suffix.lower().lstrip(".")
    if name not in WRITERS:
        raise SertoolError(f"{path}: unknown output format {name!r}; use one of {', '.join('.' + n for n in WRITERS)}")
    return name


def check_submission_attributes(attributes: Sequence[str], *, path: str | Path, system: str) -> None:
    """Refuse a submission from a system that does not predict every attribute (a system of fewer,
    ``train.attributes``, or an ensemble whose members leave one out): the challenge scores all three.

    Raises:
        SertoolError: naming ``path`` (the ``--submission`` file), ``system`` and what it lacks.
    """
    missing = [name for name in ATTRIBUTES if name not in attributes]
    if missing:
        raise SertoolError(f"--submission {path}: a submission needs {', '.join(ATTRIBUTES)}, but {system} predicts "
                           f"no {' or '.join(missing)}; ensemble it with systems of {' and '.join(missing)} "
                           "(sertool ensemble takes each attribute from the members that predict it)")


def write_submission(outputs: OutputPlan, path: Path, predictions: Predictions, *,
                     expected_ids: Sequence[str] | None = None, system: str = "the system") -> None:
    """Write exactly the challenge's submission file.

    Header ``FileName,EmoAct,EmoVal,EmoDom``; one row per file sorted by FileName; values clipped to the
    1..7 rater scale (the scorer expects that scale) with fixed decimals; nothing else.

    Args:
        predictions: whole-file predictions on the 1..7 scale (segments are not part of a submission).
        outputs: the command's outputs, in which ``path`` is declared.
        path: the CSV to write.
        expected_ids: every file the submission must cover, e.g. every Test3 file; None: whatever
            ``predictions`` holds.
        system: how a refusal names what made ``predictions``.

    Raises:
        SertoolError: the predictions lack an attribute (``check_submission_attributes``), a value is not finite,
            an id cannot be a CSV field (``sertool.core.io.csv_text``), or files are missing or extra relative to
            ``expected_ids`` (listing a few of each).
    """
    check_submission_attributes(predictions.attributes, path=path, system=system)
    check_finite(predictions, path)
    if expected_ids is not None:
        present, expected = set(predictions.ids), set(expected_ids)
        missing = sorted(expected - present)
        extra = sorted(present - expected)
        if missing or extra:
            problems = []
            if missing:
                problems.append(f"{len(missing)} expected file(s) have no prediction: {preview_ids(missing)}")
            if extra:
                problems.append(f"{len(extra)} predicted file(s) are not expected: {preview_ids(extra)}")
            raise SertoolError(f"{path}: the submission must have every expected file exactly once; "
                               + "; ".join(problems))
    order = sorted(range(len(predictions)), key=lambda row: predictions.ids[row])
    clipped = np.clip(predictions.values, LABEL_MIN, LABEL_MAX)
    text = csv_text((ID_COLUMN, *VALUE_COLUMNS), ([predictions.ids[row], *map(format_value, clipped[row])]
                                                  for row in order), destination=path)
    with outputs.writing(path, newline="") as handle:
        handle.write(text)


def _by_attribute(names: Sequence[str], row: Sequence[float]) -> dict[str, float]:
    return {name: float(value) for name, value in zip(names, row, strict=True)}


def _numbers(item: Any, keys: Sequence[str], where: str) -> list[float]:
    if not isinstance(item, dict):
        raise SertoolError(f"{where}: expected an object with {', '.join(keys)}")
    numbers = []
    for key in keys:
        value = item.get(key)
        # bool is an int in Python; true/false in a JSON file is a mistake, not 1/0.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise SertoolError(f"{where}: {key} must be a finite number, got {value!r}")
        numbers.append(float(value))
    return numbers
