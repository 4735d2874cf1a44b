"""Output writers: the registry, JSON and CSV round trips, and the exact challenge submission format."""
from __future__ import annotations

import csv
import functools
import io
import json
from pathlib import Path

import numpy as np
import pytest

from sertool.core.errors import SertoolError
from sertool.guards.outputs import OutputPlan
from sertool.inference.predictions import Predictions, Segment
from sertool.inference.writers import READERS, WRITERS, format_of, read_json, write_json, write_submission
from tests.corpus_files import commit

TEST3 = [f"MSP-PODCAST_test3_{number:04d}.wav" for number in (3, 1, 2)]


def submit(predictions: Predictions, path: Path, **kwargs) -> None:
    """``write_submission`` of ``predictions`` to ``path`` (declared as --submission, replacing a file there)."""
    outputs = OutputPlan(force=True)
    target = outputs.file(path, flag="--submission")
    assert target is not None
    write_submission(outputs, target, predictions, **kwargs)


def make_predictions(*, spread: bool = True, segments: bool = True) -> Predictions:
    rng = np.random.default_rng(5)
    return Predictions(
        ids=list(TEST3),
        values=rng.uniform(1, 7, size=(3, 3)),
        spread=rng.uniform(0, 1, size=(3, 3)) if spread else None,
        segments=[Segment(TEST3[0], 4.0, 12.0, (1.5, 2.5, 3.5)), Segment(TEST3[0], 0.0, 8.0, (1.0, 2.0, 3.0))]
        if segments else [],
    )


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_format_round_trips(tmp_path: Path, name: str) -> None:
    predictions = make_predictions()
    path = tmp_path / f"out.{name}"
    assert format_of(path) == name
    commit(path, functools.partial(WRITERS[name], predictions))
    loaded = READERS[name](path)
    assert loaded.ids == predictions.ids
    np.testing.assert_allclose(loaded.values, predictions.values, atol=5e-7)
    np.testing.assert_allclose(loaded.spread, predictions.spread, atol=5e-7)
    assert sorted(loaded.segments, key=lambda s: s.start_s) == sorted(predictions.segments, key=lambda s: s.start_s)


def test_json_is_keyed_by_attribute_name_and_exact(tmp_path: Path) -> None:
    predictions = make_predictions()
    labels = np.full((3, 3), 4.0)
    path = tmp_path / "out.json"
    commit(path, functools.partial(write_json, predictions, labels=labels))
    document = json.loads(path.read_text())
    assert document["attributes"] == ["arousal", "valence", "dominance"]
    first = document["predictions"][0]
    assert first["id"] == TEST3[0]
    assert [first["arousal"], first["valence"], first["dominance"]] == predictions.values[0].tolist()
    assert first["true"] == {"arousal": 4.0, "valence": 4.0, "dominance": 4.0}
    # Segments in time order, with their span.
    assert [(s["start_s"], s["end_s"], s["arousal"]) for s in first["segments"]] == [(0.0, 8.0, 1.0), (4.0, 12.0, 1.5)]
    assert "segments" not in document["predictions"][1]
    np.testing.assert_array_equal(read_json(path).values, predictions.values)  # floats are not rounded


def test_writers_write_to_a_stream() -> None:
    for name, writer in WRITERS.items():
        stream = io.StringIO()
        writer(make_predictions(segments=False), stream)
        assert TEST3[1] in stream.getvalue(), name
    stream = io.StringIO()
    WRITERS["json"](make_predictions(), stream)
    assert len(json.loads(stream.getvalue())["predictions"]) == 3


def test_csv_segment_rows_carry_start_and_end(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    commit(path, functools.partial(WRITERS["csv"], make_predictions(spread=False)))
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    segment_rows = [row for row in rows if row["start_s"]]
    assert [(row["FileName"], row["start_s"], row["end_s"]) for row in segment_rows] == [
        (TEST3[0], "0.000000", "8.000000"), (TEST3[0], "4.000000", "12.000000")]
    assert len(rows) - len(segment_rows) == 3


@pytest.mark.parametrize(("text", "message"), [
    ("[]", "non-empty \"predictions\" list"),
    ('{"predictions": [{"id": "a.wav", "arousal": 1, "valence": 2}]}', "predictions[0]: dominance must be"),
    ('{"predictions": [{"id": "a.wav", "arousal": 1, "valence": 2, "dominance": true}]}', "dominance must be"),
    ('{"predictions": [{"id": "a.wav", "arousal": 1, "valence": 2, "dominance": 3},'
     ' {"id": "a.wav", "arousal": 1, "valence": 2, "dominance": 3}]}',
     "predictions[1]: id 'a.wav' already appears at predictions[0]"),
    ("{not json", "not a readable JSON"),
])
def test_bad_json_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(SertoolError, match="bad.json") as error:
        read_json(path)
    assert message in str(error.value)


def test_unknown_format() -> None:
    with pytest.raises(SertoolError, match="use one of .csv, .json"):
        format_of("out.txt")


def test_submission_is_exactly_the_challenge_format(tmp_path: Path) -> None:
    predictions = Predictions(ids=list(TEST3), values=np.array([[0.5, 4.0, 7.25], [3.0, 2.123456789, 1.0],
                                                                [9.0, -1.0, 6.9999999]]),
                              spread=np.ones((3, 3)), segments=[Segment(TEST3[0], 0.0, 8.0, (1.0, 2.0, 3.0))])
    path = tmp_path / "submission.csv"
    submit(predictions, path, expected_ids=sorted(TEST3))
    assert path.read_text() == (
        "FileName,EmoAct,EmoVal,EmoDom\n"
        "MSP-PODCAST_test3_0001.wav,3.000000,2.123457,1.000000\n"
        "MSP-PODCAST_test3_0002.wav,7.000000,1.000000,7.000000\n"
        "MSP-PODCAST_test3_0003.wav,1.000000,4.000000,7.000000\n"
    )


def test_submission_header_order_clipping_on_a_larger_set(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = [f"MSP-PODCAST_test3_{number:04d}.wav" for number in rng.permutation(200)]
    values = rng.normal(4, 3, size=(200, 3))  # many values outside 1..7
    path = tmp_path / "submission.csv"
    submit(Predictions(ids=ids, values=values), path, expected_ids=ids)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["FileName", "EmoAct", "EmoVal", "EmoDom"]
    names = [row[0] for row in rows[1:]]
    assert names == sorted(ids) and len(set(names)) == len(ids)  # each file once, sorted
    written = np.array([[float(cell) for cell in row[1:]] for row in rows[1:]])
    assert written.min() >= 1.0 and written.max() <= 7.0
    expected = np.clip(values[np.argsort(ids)], 1, 7)
    np.testing.assert_allclose(written, expected, atol=5e-7)


def test_submission_missing_or_extra_files(tmp_path: Path) -> None:
    predictions = Predictions(ids=TEST3[:2] + ["MSP-PODCAST_0001_0001.wav"], values=np.full((3, 3), 4.0))
    path = tmp_path / "submission.csv"
    with pytest.raises(SertoolError) as error:
        submit(predictions, path, expected_ids=TEST3)
    message = str(error.value)
    assert f"1 expected file(s) have no prediction: {TEST3[2]}" in message
    assert "1 predicted file(s) are not expected: MSP-PODCAST_0001_0001.wav" in message
    assert not path.exists()


def test_submission_refuses_non_finite_values(tmp_path: Path) -> None:
    values = np.full((3, 3), 4.0)
    values[1, 2] = np.nan
    with pytest.raises(SertoolError, match=f"not finite numbers \\({TEST3[1]}\\)"):
        submit(Predictions(ids=TEST3, values=values), tmp_path / "s.csv")
