"""The Predictions container and its CSV: round trips, submission files, and errors that name the row."""
from __future__ import annotations

import csv
import functools
import io
from pathlib import Path

import numpy as np
import pytest

from sertool.core.errors import SertoolError
from sertool.inference.predictions import (
    Predictions,
    Segment,
    align,
    read_predictions,
    read_predictions_and_labels,
    write_predictions,
)
from tests.corpus_files import commit

IDS = ["MSP-PODCAST_0001_0001.wav", "MSP-PODCAST_0001_0002.wav", "MSP-PODCAST_0002_0001.wav"]


def make_predictions(seed: int = 0, *, spread: bool = False, segments: bool = False) -> Predictions:
    rng = np.random.default_rng(seed)
    return Predictions(
        ids=list(IDS),
        values=rng.uniform(1, 7, size=(len(IDS), 3)),
        spread=rng.uniform(0, 1, size=(len(IDS), 3)) if spread else None,
        segments=[Segment(IDS[1], 0.0, 8.0, (2.0, 3.0, 4.0)), Segment(IDS[1], 4.0, 12.5, (2.5, 3.5, 4.5))]
        if segments else [],
    )


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_round_trip_with_spread_labels_and_segments(tmp_path: Path) -> None:
    predictions = make_predictions(spread=True, segments=True)
    labels = np.random.default_rng(9).uniform(1, 7, size=(len(IDS), 3))
    path = tmp_path / "predictions.csv"
    commit(path, functools.partial(write_predictions, predictions, labels=labels))
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["FileName", "EmoAct", "EmoVal", "EmoDom", "EmoAct_spread", "EmoVal_spread", "EmoDom_spread",
                       "EmoAct_true", "EmoVal_true", "EmoDom_true", "start_s", "end_s"]
    # The file's row, then its segments in time order, with spread/true left empty on segment rows.
    assert [row[0] for row in rows[1:]] == [IDS[0], IDS[1], IDS[1], IDS[1], IDS[2]]
    assert rows[3][1:4] == ["2.000000", "3.000000", "4.000000"] and rows[3][4:10] == [""] * 6
    assert rows[3][10:] == ["0.000000", "8.000000"]

    loaded, loaded_labels = read_predictions_and_labels(path)
    assert loaded.ids == IDS
    np.testing.assert_allclose(loaded.values, predictions.values, atol=5e-7)
    np.testing.assert_allclose(loaded.spread, predictions.spread, atol=5e-7)
    np.testing.assert_allclose(loaded_labels, labels, atol=5e-7)
    assert loaded.segments == predictions.segments


def test_plain_file_has_only_submission_columns_and_no_labels(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    commit(path, functools.partial(write_predictions, make_predictions()))
    assert path.read_text().splitlines()[0] == "FileName,EmoAct,EmoVal,EmoDom"
    loaded, labels = read_predictions_and_labels(path)
    assert labels is None and loaded.spread is None and loaded.segments == []


def test_writes_to_a_text_stream() -> None:
    stream = io.StringIO()
    write_predictions(make_predictions(), stream)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 + len(IDS) and lines[1].startswith(IDS[0] + ",")


def test_reads_a_challenge_submission_file(tmp_path: Path) -> None:
    path = write_text(tmp_path / "submission.csv",
                      "FileName,EmoAct,EmoVal,EmoDom\nMSP-PODCAST_test3_0002.wav,3.5,4,2.25\n"
                      "MSP-PODCAST_test3_0001.wav,7,1,6.5\n")
    loaded = read_predictions(path)
    assert loaded.ids == ["MSP-PODCAST_test3_0002.wav", "MSP-PODCAST_test3_0001.wav"]
    np.testing.assert_array_equal(loaded.values, [[3.5, 4.0, 2.25], [7.0, 1.0, 6.5]])


def test_reads_columns_by_name_not_position(tmp_path: Path) -> None:
    path = write_text(tmp_path / "p.csv", "EmoDom,FileName,EmoVal,EmoAct\n2.0,a.wav,3.0,4.0\n")
    np.testing.assert_array_equal(read_predictions(path).values, [[4.0, 3.0, 2.0]])


@pytest.mark.parametrize(("text", "message"), [
    ("FileName,Score\na.wav,1\n", "missing column(s) EmoAct or EmoVal or EmoDom"),
    ("FileName,EmoAct_unit\na.wav,0.5\n", "missing column(s) EmoAct or EmoVal or EmoDom"),
    ("FileName,EmoAct,EmoVal,EmoDom\na.wav,1,2,3\nb.wav,1,high,3\n", "p.csv:3: EmoVal='high' is not a number"),
    ("FileName,EmoAct,EmoVal,EmoDom\na.wav,1,,3\n", "p.csv:2: EmoVal='' is not a number"),
    ("FileName,EmoAct,EmoVal,EmoDom\na.wav,1,nan,3\n", "p.csv:2: EmoVal=nan is not finite"),
    ("FileName,EmoAct,EmoVal,EmoDom\na.wav,1,2,3\nb.wav,1,2,3\na.wav,4,5,6\n",
     "p.csv:4: FileName 'a.wav' already appears at line 2"),
    ("FileName,EmoAct,EmoVal,EmoDom\n", "no prediction rows"),
    ("FileName,EmoAct,EmoVal,EmoDom,EmoAct_true\na.wav,1,2,3,4\n", "not EmoVal_true, EmoDom_true"),
    ("FileName,EmoAct,EmoVal,EmoDom,start_s,end_s\na.wav,1,2,3,,\na.wav,1,2,3,5,2\n", "p.csv:3: segment start_s=5"),
    ("FileName,EmoAct,EmoVal,EmoDom,start_s,end_s\na.wav,1,2,3,,\nb.wav,1,2,3,0,2\n", "p.csv:3: segment row of b.wav"),
])
def test_bad_files_name_the_file_and_row(tmp_path: Path, text: str, message: str) -> None:
    path = write_text(tmp_path / "p.csv", text)
    with pytest.raises(SertoolError, match="p.csv") as error:
        read_predictions(path)
    assert message in str(error.value)


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(SertoolError, match="not found"):
        read_predictions(tmp_path / "absent.csv")


def test_container_checks_shapes_and_ids() -> None:
    with pytest.raises(ValueError, match="shape"):
        Predictions(ids=["a"], values=np.zeros((1, 2)))
    with pytest.raises(ValueError, match="repeated ids a"):
        Predictions(ids=["a", "b", "a"], values=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="unknown ids c"):
        Predictions(ids=["a"], values=np.zeros((1, 3)), segments=[Segment("c", 0.0, 1.0, (1.0, 1.0, 1.0))])


def test_take_reorders_rows_and_keeps_their_segments() -> None:
    predictions = make_predictions(spread=True, segments=True)
    taken = predictions.take([IDS[2], IDS[1]])
    assert taken.ids == [IDS[2], IDS[1]]
    np.testing.assert_array_equal(taken.values, predictions.values[[2, 1]])
    np.testing.assert_array_equal(taken.spread, predictions.spread[[2, 1]])
    assert taken.segments == predictions.segments
    assert predictions.take([IDS[0]]).segments == []
    with pytest.raises(SertoolError, match=r"run.csv: no prediction for 1 of 2 files: x.wav"):
        predictions.take([IDS[0], "x.wav"], source="run.csv")


def test_align_reorders_members_by_id() -> None:
    first = make_predictions(0)
    second = make_predictions(1).take([IDS[2], IDS[0], IDS[1]])
    aligned = align([first, second])
    assert aligned[1].ids == IDS
    np.testing.assert_array_equal(aligned[1].values, make_predictions(1).values)


def test_align_lists_missing_and_extra_ids() -> None:
    first = make_predictions(0)
    other = Predictions(ids=[IDS[0], "extra.wav"], values=np.ones((2, 3)))
    with pytest.raises(SertoolError) as error:
        align([first, other], names=["a.csv", "b.csv"])
    message = str(error.value)
    assert f"b.csv lacks 2 file(s) of a.csv: {IDS[1]}, {IDS[2]}" in message
    assert "b.csv has 1 file(s) a.csv lacks: extra.wav" in message
