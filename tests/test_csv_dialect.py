"""A CSV sertool writes is always one sertool reads: every writer and ``read_csv_records`` share one dialect.

Property tests (hypothesis) write generated hostile ids and values through each CSV format, the predictions
CSV, the submission, the manifest and the labels file of the demo corpus, and read them back: ids come back
exactly (commas, quotes, spaces at either end, non-ASCII, ``\\xNN`` escapes, a leading ``=``/``+``/``-``/``@``,
thousands of characters), numbers as the text the file holds. An id no one-line CSV row can hold (a line
break, a carriage return, a NUL byte) is refused by every writer, naming it, before anything is written.
"""
from __future__ import annotations

import dataclasses
import io
import math
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sertool.cache.scan import ScanCache
from sertool.core.errors import SertoolError
from sertool.core.io import MAX_CSV_FIELD_CHARS, csv_text, quoted, read_csv_records
from sertool.core.splits import SPLITS
from sertool.data.fields import parse_speaker
from sertool.data.manifest import read_manifest, write_manifest
from sertool.data.msp import _parse_labels
from sertool.data.records import EMO_CLASSES, GENDERS, LABEL_MAX, LABEL_MIN, Utterance
from sertool.data.report import LoadReport
from sertool.demo.corpus import _write_labels
from sertool.guards.outputs import OutputPlan
from sertool.inference.predictions import (
    Predictions,
    Segment,
    format_value,
    read_predictions,
    read_predictions_and_labels,
    write_predictions,
)
from sertool.inference.writers import read_json, write_predictions_file, write_submission
from tests.cases import case
from tests.corpus_files import commit, write_tone

# Few examples, no deadline: each test runs in a second or two, and a slow disk fails nothing.
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# What ids are made of: the characters a CSV dialect stumbles on, more often than chance would draw them.
HOSTILE_PIECES = [",", '"', '""', " ", "\t", "\xa0", "\u2028", "\x85", "\x0b", "\x0c", "\ufeff", "=", "+", "-", "@",
                  "=SUM(A1)", "é", "中文", "🎵", "\\xe9", "caf\\xe9", "'", ";", "#", "a.wav", "MSP-PODCAST_0001_0001.wav"]
LINE_BREAKERS = ["\n", "\r", "\0"]
_WRITABLE_CHARACTERS = st.characters(blacklist_categories=("Cs",), blacklist_characters="".join(LINE_BREAKERS))
_PIECE = st.one_of(st.sampled_from(HOSTILE_PIECES), st.text(_WRITABLE_CHARACTERS, min_size=1, max_size=4))
_SHORT_IDS = st.lists(_PIECE, min_size=1, max_size=6).map("".join)
_LONG_IDS = st.builds(lambda piece, length: (piece * length)[:length], _PIECE, st.integers(500, 5_000))
IDS = st.one_of(_SHORT_IDS, _SHORT_IDS, _LONG_IDS)
# Finite floats of every magnitude, the extremes included.
VALUES = st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                   st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 1.7976931348623157e308, -1.7976931348623157e308,
                                    1e-7, 0.4999995, 1.0, 7.0]))


def _predictions_file(predictions: Predictions, path: Path, **kwargs) -> None:
    """The predictions file a command writes as --out (its format from the suffix)."""
    outputs = OutputPlan(force=True)
    write_predictions_file(outputs, outputs.file(path, flag="--out"), predictions, **kwargs)  # type: ignore[arg-type]


def _submission_file(predictions: Predictions, path: Path) -> None:
    outputs = OutputPlan(force=True)
    write_submission(outputs, outputs.file(path, flag="--submission"), predictions)  # type: ignore[arg-type]


def _manifest_file(utterances: list[Utterance], path: Path) -> None:
    commit(path, lambda handle: write_manifest(utterances, handle, folder=path.parent, where=path))


def _unwritable_ids():
    """Ids holding at least one character no CSV line can hold."""
    return st.builds(lambda head, breaker, tail: head + breaker + tail, _SHORT_IDS, st.sampled_from(LINE_BREAKERS),
                     st.text(_WRITABLE_CHARACTERS, max_size=3))


def _rows(num_rows: int) -> st.SearchStrategy[list[list[float]]]:
    return st.lists(st.lists(VALUES, min_size=3, max_size=3), min_size=num_rows, max_size=num_rows)


@st.composite
def predictions_and_labels(draw) -> tuple[Predictions, np.ndarray | None]:
    """Predictions of hostile ids, maybe with spread, labels and segments (spans in whole samples, as `predict`
    makes them)."""
    ids = draw(st.lists(IDS, min_size=1, max_size=5, unique=True))
    spread = np.array(draw(_rows(len(ids)))) if draw(st.booleans()) else None
    labels = np.array(draw(_rows(len(ids)))) if draw(st.booleans()) else None
    segments = []
    for file_id in draw(st.lists(st.sampled_from(ids), max_size=3)):
        start, length = draw(st.integers(0, 10**7)), draw(st.integers(1, 10**6))
        segments.append(Segment(file_id, start / 16_000, (start + length) / 16_000, tuple(draw(_rows(1))[0])))
    return Predictions(ids, np.array(draw(_rows(len(ids)))), spread=spread, segments=segments), labels


def _as_written(values) -> np.ndarray:
    """What a CSV holds of each number: its text with ``FLOAT_DECIMALS`` decimals."""
    return np.vectorize(lambda value: float(format_value(value)))(np.asarray(values, dtype=np.float64))


@FAST
@given(columns=st.integers(1, 4), data=st.data())
def test_any_writable_text_reads_back_as_written(columns, data):
    header = [f"column {index}" for index in range(columns)]
    rows = data.draw(st.lists(st.lists(st.one_of(IDS, st.just("")), min_size=columns, max_size=columns),
                              min_size=1, max_size=5))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.csv"
        path.write_text(csv_text(header, rows, destination=path), encoding="utf-8", newline="")
        read = [[record[name] for name in header] for _, record in read_csv_records(path, header, what="test")]
    assert read == rows


@case("inference", "a predictions CSV of hostile ids and finite values of any magnitude, with spread, labels and "
      "segments", "write → read gives the same ids and the numbers the file holds; writing again gives the same bytes")
@FAST
@given(predictions_and_labels())
def test_predictions_csv_round_trip(drawn):
    predictions, labels = drawn
    with tempfile.TemporaryDirectory() as folder:
        path, again = Path(folder) / "p.csv", Path(folder) / "again.csv"
        _predictions_file(predictions, path, labels=labels)
        read, read_labels = read_predictions_and_labels(path)
        _predictions_file(read, again, labels=read_labels)
        assert again.read_bytes() == path.read_bytes()
    assert read.ids == predictions.ids
    np.testing.assert_array_equal(read.values, _as_written(predictions.values))
    assert (read.spread is None) == (predictions.spread is None)
    if predictions.spread is not None:
        np.testing.assert_array_equal(read.spread, _as_written(predictions.spread))
    if labels is not None:
        np.testing.assert_array_equal(read_labels, _as_written(labels))
    expected = sorted((s.id, float(format_value(s.start_s)), float(format_value(s.end_s)), *_as_written(s.values))
                      for s in predictions.segments)
    assert sorted((s.id, s.start_s, s.end_s, *s.values) for s in read.segments) == expected


@FAST
@given(predictions_and_labels())
def test_predictions_json_round_trip_is_exact(drawn):
    predictions, _ = drawn
    with tempfile.TemporaryDirectory() as folder:
        _predictions_file(predictions, Path(folder) / "p.json")
        read = read_json(Path(folder) / "p.json")
    assert read.ids == predictions.ids
    np.testing.assert_array_equal(read.values, predictions.values)


@case("inference", "a submission of hostile ids and values of any magnitude",
      "read back with the same ids, sorted, and the clipped values it holds (property test)")
@FAST
@given(predictions_and_labels())
def test_submission_round_trip(drawn):
    predictions, _ = drawn
    with tempfile.TemporaryDirectory() as folder:
        _submission_file(predictions, Path(folder) / "s.csv")
        read = read_predictions(Path(folder) / "s.csv")
    order = sorted(range(len(predictions)), key=lambda row: predictions.ids[row])
    assert read.ids == [predictions.ids[row] for row in order]
    np.testing.assert_array_equal(read.values, _as_written(np.clip(predictions.values[order], LABEL_MIN, LABEL_MAX)))


# Audio file names: what a file system allows (no "/" or NUL) and a CSV line holds, within 255 bytes.
_FILE_NAMES = (st.lists(st.one_of(st.sampled_from([p for p in HOSTILE_PIECES if p != "\\xe9"]),
                                  st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\n\r\0"),
                                          min_size=1, max_size=3)), min_size=1, max_size=5)
               .map(lambda parts: "".join(parts) + ".wav").filter(lambda name: len(name.encode()) <= 255))
_LABEL = st.one_of(st.none(), st.floats(LABEL_MIN, LABEL_MAX))
# Fields as the readers hand them over: stripped, one line.
_PLAIN = st.lists(_PIECE, min_size=1, max_size=3).map(lambda parts: " ".join("".join(parts).split())).filter(bool)


@st.composite
def manifest_utterances(draw) -> list[Utterance]:
    ids = draw(st.lists(IDS, min_size=1, max_size=4, unique=True))
    names = draw(st.lists(_FILE_NAMES, min_size=len(ids), max_size=len(ids), unique=True))
    utterances = []
    for utt_id, name in zip(ids, names, strict=True):
        labels = [draw(st.floats(LABEL_MIN, LABEL_MAX)) for _ in range(3)] if draw(st.booleans()) else [None] * 3
        utterances.append(Utterance(
            id=utt_id, audio_path=Path("sub, \"dir\" é") / name, split=draw(st.sampled_from([*SPLITS, "my split"])),
            duration_s=0.05, arousal=labels[0], valence=labels[1], dominance=labels[2],
            emo_class=draw(st.one_of(st.none(), st.sampled_from(sorted(EMO_CLASSES)))),
            speaker=draw(st.one_of(st.none(), _PLAIN.filter(lambda text: parse_speaker(text) == text))),
            gender=draw(st.one_of(st.none(), st.sampled_from(GENDERS))),
            transcript=draw(st.one_of(st.none(), _PLAIN))))
    return utterances


@case("data", "a manifest (`data manifest`) of hostile ids, audio file names and speakers",
      "read back with the same ids, paths, labels and fields (property test)")
@FAST
@given(manifest_utterances())
def test_manifest_round_trip(utterances):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        placed = [dataclasses.replace(utt, audio_path=root / utt.audio_path) for utt in utterances]
        for utt in placed:
            write_tone(utt.audio_path, duration_s=0.05)
        _manifest_file(placed, root / "m.csv")
        corpus = read_manifest(root / "m.csv", scan=ScanCache(root / "cache"))
    assert not corpus.report.dropped
    assert corpus.utterances == placed


def _inside_audios(name: str) -> bool:
    """A FileName the MSP reader keeps: not absolute, not climbing out (guards.reads.inside)."""
    return not name.startswith("/") and ".." not in Path(name).parts


@case("data", "the demo corpus's labels file with hostile file names and speakers",
      "read back by the MSP-Podcast reader with the same names and fields (property test)")
@FAST
@given(st.lists(st.tuples(IDS.filter(_inside_audios), st.sampled_from(sorted(EMO_CLASSES)), st.lists(st.floats(LABEL_MIN, LABEL_MAX),
                                                                               min_size=3, max_size=3),
                          st.integers(0, 10**6), st.sampled_from(GENDERS), st.sampled_from(SPLITS)),
                min_size=1, max_size=5, unique_by=lambda item: item[0]))
def test_demo_labels_round_trip(drawn):
    items = [SimpleNamespace(file_name=name, emo_class=code, arousal=a, valence=v, dominance=d,
                             speaker=SimpleNamespace(speaker_id=speaker, gender=gender, split=split))
             for name, code, (a, v, d), speaker, gender, split in drawn]
    with tempfile.TemporaryDirectory() as folder:
        labels = Path(folder) / "Labels" / "labels_consensus.csv"
        labels.parent.mkdir()
        commit(labels, lambda handle: _write_labels(handle, items, where=labels))
        report = LoadReport()
        rows = _parse_labels(labels, report)
    assert not report.dropped
    expected = sorted((item.file_name, item.emo_class, round(item.arousal, 1), round(item.valence, 1),
                       round(item.dominance, 1), str(item.speaker.speaker_id), item.speaker.gender, item.speaker.split)
                      for item in items)
    read = sorted((row.id, row.fields["emo_class"], row.fields["arousal"], row.fields["valence"],
                   row.fields["dominance"], row.fields["speaker"], row.fields["gender"], row.fields["split"])
                  for row in rows)
    assert [row[:2] + row[5:] for row in read] == [row[:2] + row[5:] for row in expected]
    assert all(math.isclose(a, b, abs_tol=0.051) for r, e in zip(read, expected, strict=True)
               for a, b in zip(r[2:5], e[2:5], strict=True))


def _writers(bad_id: str, folder: Path):
    """Each CSV writer given one id it cannot write, with the file it would write."""
    predictions = Predictions(["fine.wav", bad_id], np.full((2, 3), 4.0))
    utterance = Utterance(id=bad_id, audio_path=folder / "a.wav", split="Train", duration_s=1.0)
    planned = SimpleNamespace(file_name=bad_id, emo_class="N", arousal=4.0, valence=4.0, dominance=4.0,
                              speaker=SimpleNamespace(speaker_id=1, gender="Male", split="Train"))
    return [(lambda path: _predictions_file(predictions, path), folder / "p.csv"),
            (lambda path: _submission_file(predictions, path), folder / "s.csv"),
            (lambda path: _manifest_file([utterance], path), folder / "m.csv"),
            (lambda path: commit(path, lambda handle: _write_labels(handle, [planned], where=path)),
             folder / "labels_consensus.csv")]


@case("data", "an id holding a line break, a carriage return or a NUL byte given to any CSV writer",
      "refused in one line naming the id; no file written (property test)")
@FAST
@given(_unwritable_ids())
def test_an_id_no_csv_line_can_hold_is_refused_before_anything_is_written(bad_id):
    with tempfile.TemporaryDirectory() as folder:
        for write, path in _writers(bad_id, Path(folder)):
            with pytest.raises(SertoolError) as error:
                write(path)
            message = str(error.value)
            assert "\n" not in message and "\r" not in message and "\0" not in message
            assert quoted(bad_id) in message and str(path) in message
            assert list(Path(folder).iterdir()) == []  # not even a temporary file
        stream = io.StringIO()
        with pytest.raises(SertoolError):
            write_predictions(Predictions(["fine.wav", bad_id], np.full((2, 3), 4.0)), stream)
        assert stream.getvalue() == ""


def test_a_field_over_the_limit_is_refused_by_the_writer_as_the_reader_would(tmp_path):
    predictions = Predictions(["x" * (MAX_CSV_FIELD_CHARS + 1)], np.full((1, 3), 4.0))
    with pytest.raises(SertoolError, match=r"p\.csv: cannot write FileName 'x{100}…' \(131,073 characters\): it is "
                                           r"longer than the field limit"):
        _predictions_file(predictions, tmp_path / "p.csv")
    near = Predictions(["x" * MAX_CSV_FIELD_CHARS], np.full((1, 3), 4.0))
    _predictions_file(near, tmp_path / "p.csv")
    assert read_predictions(tmp_path / "p.csv").ids == near.ids


def test_quoted_and_hand_edited_fields_read_as_meant(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('id, value\n" a, ""b"" ",  3.5 \n  plain id  ,4\n"x" , 5\n"open, 6\n"closed"after,7\n',
                    encoding="utf-8")
    damaged = []
    records = read_csv_records(path, ["id"], what="test", on_damage=lambda line, detail: damaged.append((line, detail)))
    assert [record for _, record in records] == [{"id": ' a, "b" ', "value": "3.5"}, {"id": "plain id", "value": "4"},
                                                {"id": "x", "value": "5"}]
    assert [line for line, _ in damaged] == [5, 6]
    assert "never closed" in damaged[0][1] and "text after the closing quote of field 1" in damaged[1][1]


# ---------------------------------------------------------------------------------------------------------
# The commands: what `predict`, `data manifest` and `baseline` write from hostile file names and ids.

HOSTILE_NAMES = ["  leading spaces.wav", "comma, here.wav", 'quote "q".wav', "=cmd|' /C calc'!A0.wav", "+1.wav",
                 "-1.wav", "@sum.wav", "ünï — 声.wav", "tab\there.wav"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from sertool.training.loop import train
    from tests.corpus_files import write_learnable_corpus
    from tests.systems import small_config

    folder = tmp_path_factory.mktemp("dialect")
    train(small_config(write_learnable_corpus(folder / "c", per_split={"Train": 8, "Development": 4}), epochs=1),
          folder / "run")
    return folder / "run"


@case("inference", "`predict` of files named with spaces at either end, commas, quotes, a leading =/+/-/@, a tab",
      "the predictions CSV, the submission and stdout name each file exactly as it is")
def test_predict_writes_hostile_file_names_that_read_back_exactly(run_dir, tmp_path):
    from tests.test_reliability import run

    for name in HOSTILE_NAMES:
        write_tone(tmp_path / "in" / name, duration_s=0.5)
    out, submission = tmp_path / "p.csv", tmp_path / "s.csv"
    result = run("predict", run_dir, tmp_path / "in", "--out", out, "--submission", submission)
    assert result.exit_code == 0, result.output
    assert sorted(read_predictions(out).ids) == sorted(HOSTILE_NAMES)
    assert read_predictions(submission).ids == sorted(HOSTILE_NAMES)
    streamed = run("predict", run_dir, tmp_path / "in")
    (tmp_path / "stdout.csv").write_text(streamed.stdout, encoding="utf-8")
    assert read_predictions(tmp_path / "stdout.csv").ids == read_predictions(out).ids


@case("inference", "`predict` of a file whose name holds a line break", "refused in one line naming it; no --out "
      "or --submission written, nothing on stdout")
def test_predict_refuses_a_file_name_no_csv_line_can_hold(run_dir, tmp_path):
    from tests.test_reliability import one_line_error, run

    write_tone(tmp_path / "in" / "fine.wav", duration_s=0.5)
    write_tone(tmp_path / "in" / "two\nlines.wav", duration_s=0.5)
    out, submission = tmp_path / "p.csv", tmp_path / "s.csv"
    for outputs in (["--out", out], ["--submission", submission], []):
        result = run("predict", run_dir, tmp_path / "in", *outputs)
        line = one_line_error(result)
        assert "cannot write FileName 'two\\nlines.wav': it holds a line break" in line
        assert result.stdout == "" or not result.stdout.startswith("FileName")
    assert not out.exists() and not submission.exists()
    json_out = tmp_path / "p.json"  # JSON holds any id
    assert run("predict", run_dir, tmp_path / "in", "--out", json_out).exit_code == 0
    assert sorted(read_json(json_out).ids) == ["fine.wav", "two\nlines.wav"]


@case("data", "`data manifest` metadata and `baseline` corpora whose ids hold commas, quotes, spaces, =, non-ASCII",
      "the manifest and the baseline's CSVs read back with the same ids")
def test_data_manifest_and_baseline_keep_hostile_ids(tmp_path):
    from sertool.baseline.options import BaselineOptions
    from sertool.baseline.run import run_baseline
    from sertool.data.corpus import open_corpus
    from tests.test_reliability import run

    rng = np.random.default_rng(0)
    rows = ["file,id,split,arousal,valence,dominance"]
    ids = {}
    for index in range(12):
        split = ["Train", "Train", "Development", "Test1"][index % 4]
        name = HOSTILE_NAMES[index % len(HOSTILE_NAMES)]
        utt_id = f" {index}{name}"
        write_tone(tmp_path / "audio" / f"{index}.wav", duration_s=0.5, frequency_hz=150 + 40 * index)
        escaped = utt_id.replace('"', '""')
        a, v, d = rng.uniform(1.5, 6.5, size=3)
        rows.append(f'{index}.wav,"{escaped}",{split},{a:.2f},{v:.2f},{d:.2f}')
        ids.setdefault(split, []).append(utt_id)
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    manifest = tmp_path / "manifest.csv"
    result = run("data", "manifest", tmp_path / "audio", tmp_path / "meta.csv", "--out", manifest,
                 "--path-column", "file", "--id-column", "id", "--split-column", "split", "--arousal-column",
                 "arousal", "--valence-column", "valence", "--dominance-column", "dominance")
    assert result.exit_code == 0, result.output
    assert sorted(utt.id for utt in open_corpus(manifest).utterances) == sorted(sum(ids.values(), []))
    written = run_baseline(BaselineOptions(corpus=manifest, out=tmp_path / "floor", num_workers=0)).written
    for split in ("Development", "Test1"):
        assert read_predictions(tmp_path / "floor" / f"{split}.csv").ids == ids[split]
    assert len(written) == 3
