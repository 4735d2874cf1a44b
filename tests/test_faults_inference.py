"""Fault injection on the data and inference side: damaged CSV/JSON, exotic audio, hostile paths, long files,
non-finite numbers, broken checkpoints and ensembles.

Each case ends as one clear line naming the file, row or flag, or as correct behaviour: never a traceback,
never exit 0 with garbage, never a lost or mixed file. docs/reliability.md ("Data and inference") lists
every case with its test; keep the two in step.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sertool.data.corpus import open_corpus
from sertool.errors import SertoolError
from sertool.inference.predictions import read_predictions
from tests.corpus_files import write_learnable_corpus, write_tone
from tests.test_reliability import one_line_error, run


def _labels(corpus: Path) -> Path:
    return corpus / "Labels" / "labels_consensus.csv"


def _split_counts(corpus: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for utt in open_corpus(corpus).utterances:
        counts[utt.split] = counts.get(utt.split, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------------------
# CSV files: one reader (sertool.io.read_csv_records) for labels, manifests, metadata, transcripts, predictions.

@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_learnable_corpus(tmp_path / "c", per_split={"Train": 24, "Development": 12, "Test1": 10})


def test_a_stray_quote_damages_only_its_own_row(corpus):
    before = _split_counts(corpus)
    labels = _labels(corpus)
    lines = labels.read_text().splitlines()
    fields = lines[4].split(",")
    fields[1] = '"' + fields[1]  # one stray quote in the EmoClass of line 5, a Train row
    lines[4] = ",".join(fields)
    labels.write_text("\n".join(lines) + "\n")
    opened = open_corpus(corpus)
    assert _split_counts(corpus) == {**before, "Train": before["Train"] - 1}
    [problem] = opened.report.dropped
    assert problem.where == f"{labels}:5" and problem.reason == "damaged row"
    assert "quote" in problem.detail and "never closed" in problem.detail
    assert opened.report.summary() == "dropped 1 row (1 damaged row)"


@pytest.mark.parametrize(("line", "detail"), [
    ("MSP-PODCAST_0099_0001.wav,N,2.0,3.0,4.0,9,Male,Train,extra", "has 9 fields where the header has 8"),
    ("MSP-PODCAST_0099_0001.wav,N,2.0,3.0,4.0,9,Male", "has 7 fields where the header has 8"),
    ("MSP-PODCAST_0099_0001.wav,N,2.0,3.0,4.0,9\0,Male,Train", "NUL byte"),
    ("MSP-PODCAST_0099_0001.wav,N,2.0,3.0,4.0,9,Male,\"" + "x" * 200_000 + "\"", "field larger than field limit"),
])
def test_damaged_lines_are_dropped_with_their_line_and_the_rest_is_kept(corpus, line, detail):
    before = _split_counts(corpus)
    labels = _labels(corpus)
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join([*lines[:3], line, *lines[3:]]) + "\n")
    opened = open_corpus(corpus)
    assert _split_counts(corpus) == before
    [problem] = opened.report.dropped
    assert problem.where == f"{labels}:4" and detail in problem.detail


def test_bom_and_crlf_line_ends_read_like_plain_lines(corpus):
    before = _split_counts(corpus)
    labels = _labels(corpus)
    text = labels.read_text()
    labels.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    assert _split_counts(corpus) == before and not open_corpus(corpus).report.dropped


@pytest.mark.parametrize(("content", "message"), [
    ("FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set,EmoAct\n", "EmoAct appear more than once"),
    ("", "is empty (no header row)"),
    ('FileName,"EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set\n', "header row is damaged"),
])
def test_a_damaged_header_refuses_the_file(corpus, content, message):
    _labels(corpus).write_text(content)
    line = one_line_error(run("data", "info", corpus))
    assert "labels_consensus.csv" in line and message in line


def test_a_utf16_labels_file_is_named_as_not_utf8(corpus):
    labels = _labels(corpus)
    labels.write_bytes(labels.read_text().encode("utf-16"))
    line = one_line_error(run("data", "info", corpus))
    assert "labels_consensus.csv: the labels file is not UTF-8 text" in line


def test_manifests_and_metadata_drop_only_the_damaged_line(tmp_path):
    for name in ("a", "b", "c"):
        write_tone(tmp_path / f"{name}.wav", duration_s=0.5)
    rows = "a.wav,Train,2,3,4\n\"b.wav,Train,2,3,4\nc.wav,Train,2,3,4\n"
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,split,arousal,valence,dominance\n" + rows)
    opened = open_corpus(manifest)
    assert [utt.id for utt in opened.utterances] == ["a.wav", "c.wav"]
    assert [p.where for p in opened.report.dropped] == [f"{manifest}:3"]
    meta = tmp_path / "meta.csv"
    meta.write_text("file,split,a,v,d\n" + rows)
    result = run("data", "manifest", tmp_path, meta, "--out", tmp_path / "out.csv", "--path-column", "file",
                 "--split-column", "split")
    assert result.exit_code == 0, result.output
    assert "dropped 1 row (1 damaged row)" in result.output
    assert [utt.id for utt in open_corpus(tmp_path / "out.csv").utterances] == ["a.wav", "c.wav"]


def test_predictions_and_transcripts_csvs_refuse_a_damaged_line_naming_it(tmp_path):
    predictions = tmp_path / "p.csv"
    predictions.write_text('FileName,EmoAct,EmoVal,EmoDom\na.wav,3,4,5\n"b.wav,3,4,5\nc.wav,3,4,5\n')
    with pytest.raises(SertoolError, match=r"p\.csv:3: the row opens a quote"):
        read_predictions(predictions)
    write_tone(tmp_path / "a.wav", duration_s=0.5)
    transcripts = tmp_path / "t.csv"
    transcripts.write_text('FileName,transcript\na.wav,"hello\nb.wav,world\n')
    from sertool.inference.inputs import attach_transcripts, collect_inputs

    utterances, _ = collect_inputs([tmp_path / "a.wav"])
    with pytest.raises(SertoolError, match=r"t\.csv:2: the row opens a quote"):
        attach_transcripts(utterances, transcripts)
    transcripts.write_text('id,transcript\r\n"a.wav","hello, ""world"""\r\n')
    assert attach_transcripts(utterances, transcripts)[0].transcript == 'hello, "world"'
