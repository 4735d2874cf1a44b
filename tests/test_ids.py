"""One rule for an id read twice, in every reader of ids (``sertool.core.io.SeenIds``).

Files read whole (predictions, transcripts, ensemble plans, the inputs of one command) refuse the repeat in
one line naming both places; corpora (labels file, manifest, `data manifest` metadata) drop the repeat and
name the first. Either way, no later row silently replaces an earlier one.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from sertool.core.errors import SertoolError
from sertool.data.columns import ColumnMap
from sertool.data.corpus import open_corpus
from sertool.data.importer import import_metadata
from sertool.data.records import Utterance
from sertool.data.report import LoadReport
from sertool.inference.ensemble import read_plan
from sertool.inference.inputs import attach_transcripts, collect_inputs
from sertool.inference.predictions import read_predictions
from sertool.inference.writers import read_json
from tests.cases import case
from tests.corpus_files import write_msp_corpus, write_tone
from tests.test_reliability import one_line_error, run


def _clips(folder: Path, *names: str) -> list[Utterance]:
    for name in names:
        write_tone(folder / name, duration_s=0.5)
    return collect_inputs([folder / name for name in names])[0]


def _predictions_csv(tmp_path: Path) -> Callable[[], object]:
    (tmp_path / "p.csv").write_text("FileName,EmoAct,EmoVal,EmoDom\nx.wav,1,2,3\ny.wav,2,3,4\nx.wav,4,5,6\n")
    return lambda: read_predictions(tmp_path / "p.csv")


def _predictions_json(tmp_path: Path) -> Callable[[], object]:
    entry = {"id": "x.wav", "arousal": 1, "valence": 2, "dominance": 3}
    (tmp_path / "p.json").write_text(json.dumps({"predictions": [entry, {**entry, "id": "y.wav"}, entry]}))
    return lambda: read_json(tmp_path / "p.json")


def _transcripts_csv(tmp_path: Path) -> Callable[[], object]:
    utterances = _clips(tmp_path / "audio", "x.wav", "y.wav")
    (tmp_path / "t.csv").write_text("FileName,transcript\nx.wav,first words\ny.wav,other\nx.wav,later words\n")
    return lambda: attach_transcripts(utterances, tmp_path / "t.csv")


def _ensemble_plan(tmp_path: Path) -> Callable[[], object]:
    members = [{"member": 0, "weight": 1.0}]
    (tmp_path / "plan.json").write_text(json.dumps({
        "format": "sertool-ensemble", "version": 1, "kind": "mean", "members": ["x.csv", "y.csv", "x.csv"],
        "attributes": {name: {"members": members} for name in ("arousal", "valence", "dominance")}}))
    return lambda: read_plan(tmp_path / "plan.json")


def _predict_inputs(tmp_path: Path) -> Callable[[], object]:
    for folder in ("a", "b"):
        write_tone(tmp_path / folder / "x.wav", duration_s=0.5)
    return lambda: collect_inputs([tmp_path / "a" / "x.wav", tmp_path / "b" / "x.wav"])


@case("data", "an id twice in a predictions CSV or JSON, a --transcripts CSV, an ensemble plan's members, "
      "the files given to predict", "refused in one line naming both places (the --transcripts CSV: the later row won)")
@pytest.mark.parametrize(("make", "repeated", "second", "first"), [
    (_predictions_csv, "x.wav", "p.csv:4", "line 2"),
    (_predictions_json, "x.wav", "p.json: predictions[2]", "predictions[0]"),
    (_transcripts_csv, "x.wav", "t.csv:4", "line 2"),
    (_ensemble_plan, "x.csv", "plan.json: members[2]", "members[0]"),
    (_predict_inputs, "x.wav", "b/x.wav", "a/x.wav"),
])
def test_a_file_read_whole_refuses_an_id_read_twice_naming_both_places(tmp_path, make, repeated, second, first):
    read = make(tmp_path)
    with pytest.raises(SertoolError) as error:
        read()
    message = str(error.value)
    assert "\n" not in message and f"{second}: " in message and f"{repeated!r} already appears at " in message
    assert f"{first}; " in message


def _labels_file(tmp_path: Path) -> tuple[Path, Path]:
    rows = [["x.wav", "N", "2.0", "3.0", "4.0", "1", "Male", "Train"],
            ["y.wav", "N", "3.0", "3.0", "3.0", "1", "Male", "Train"],
            ["x.wav", "N", "6.0", "6.0", "6.0", "1", "Male", "Train"]]
    root = write_msp_corpus(tmp_path / "msp", rows)
    return root, root / "Labels" / "labels_consensus.csv"


def _manifest(tmp_path: Path) -> tuple[Path, Path]:
    for name in ("a.wav", "b.wav", "c.wav"):
        write_tone(tmp_path / name, duration_s=0.5)
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path,split,arousal,valence,dominance\nx.wav,a.wav,Train,2,3,4\ny.wav,b.wav,Train,3,3,3\n"
                        "x.wav,c.wav,Train,6,6,6\n")
    return manifest, manifest


def _read_corpus(source: Path) -> tuple[list[Utterance], LoadReport]:
    corpus = open_corpus(source)
    return corpus.utterances, corpus.report


def _read_metadata(source: Path) -> tuple[list[Utterance], LoadReport]:
    return import_metadata(source.parent, source, columns=ColumnMap(id="id", split="split", arousal="arousal",
                                                                      valence="valence", dominance="dominance"))


@case("data", "an id twice in a labels file, a manifest or `data manifest` metadata",
      "the first row kept, the later one dropped as `duplicate id` naming the first's line")
@pytest.mark.parametrize(("make", "read"), [(_labels_file, _read_corpus), (_manifest, _read_corpus),
                                            (_manifest, _read_metadata)])
def test_a_corpus_keeps_the_first_row_of_an_id_and_names_the_repeat(tmp_path, make, read):
    source, table = make(tmp_path)
    utterances, report = read(source)
    assert sorted(utt.id for utt in utterances) == ["x.wav", "y.wav"]
    assert next(utt for utt in utterances if utt.id == "x.wav").labels() == (2.0, 3.0, 4.0)  # the first row's
    [problem] = report.dropped
    assert (problem.where, problem.reason) == (f"{table}:4", "duplicate id")
    assert problem.detail == "id 'x.wav' already appears at line 2"


@case("inference", "`sertool ensemble` given the same member twice (another spelling of its path included)",
      "refused before any work, naming both")
def test_an_ensemble_of_one_member_twice_is_refused_naming_both(tmp_path, tiny_msp, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.csv").write_text("FileName,EmoAct,EmoVal,EmoDom\n")  # never read: refused before
    line = one_line_error(run("ensemble", "p.csv", "./p.csv", "--corpus", tiny_msp, "--split", "Development"))
    assert f"./p.csv: member '{tmp_path / 'p.csv'}' already appears at p.csv" in line


@case("inference", "a --transcripts CSV naming a/x.wav and b/x.wav for the inputs a/x.wav and b/x.wav",
      "each input gets its own row (the later row went to both)")
def test_transcripts_match_by_id_before_file_name(tmp_path):
    utterances, _ = collect_inputs([_folder_of_two_x(tmp_path)])
    (tmp_path / "t.csv").write_text("FileName,transcript\na/x.wav,words of a\nb/x.wav,words of b\n/data/y.wav,why\n")
    texts = {utt.id: utt.transcript for utt in attach_transcripts(utterances, tmp_path / "t.csv")}
    assert texts == {"a/x.wav": "words of a", "b/x.wav": "words of b"}
    one, _ = collect_inputs([tmp_path / "in" / "a" / "x.wav"])  # the input x.wav: no row has that id
    with pytest.raises(SertoolError, match=r"the rows of 'a/x\.wav', 'b/x\.wav' all match 'x\.wav' by file name"):
        attach_transcripts(one, tmp_path / "t.csv")


@case("inference", "one transcript (a CSV row x.wav, a file x.txt) that would go to the inputs a/x.wav and b/x.wav",
      "refused naming both inputs (both got it)")
def test_one_transcript_is_never_given_to_two_inputs(tmp_path):
    utterances, _ = collect_inputs([_folder_of_two_x(tmp_path)])
    (tmp_path / "t.csv").write_text("FileName,transcript\nx.wav,words\n")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "x.txt").write_text("words\n")
    for source, named in ((tmp_path / "t.csv", "'x.wav'"), (tmp_path / "texts", "'x.txt'")):
        with pytest.raises(SertoolError, match=f"{named} matches both 'a/x.wav' and 'b/x.wav'"):
            attach_transcripts(utterances, source)


def _folder_of_two_x(tmp_path: Path) -> Path:
    for folder in ("a", "b"):
        write_tone(tmp_path / "in" / folder / "x.wav", duration_s=0.5)
    return tmp_path / "in"


def test_an_empty_id_in_a_transcripts_csv_is_named(tmp_path):
    utterances = _clips(tmp_path / "audio", "x.wav")
    (tmp_path / "t.csv").write_text("id,transcript\n,orphan words\n")
    with pytest.raises(SertoolError, match=r"t\.csv:2: the id is empty"):
        attach_transcripts(utterances, tmp_path / "t.csv")

