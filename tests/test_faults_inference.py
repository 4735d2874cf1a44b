"""Fault injection on the data and inference side: damaged CSV/JSON, exotic audio, hostile paths, long files,
non-finite numbers, broken checkpoints and ensembles.

Each case ends as one clear line naming the file, row or flag, or as correct behaviour: never a traceback,
never exit 0 with garbage, never a lost or mixed file. Each test carries its cases as `@case` markers
(tests/cases.py), from which docs/reliability.md's tables are generated (scripts/reliability_table.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sertool.core.errors import SertoolError
from sertool.data.corpus import open_corpus
from sertool.inference.predictions import read_predictions
from tests.cases import case
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
# CSV files: one reader (sertool.core.io.read_csv_records) for labels, manifests, metadata, transcripts, predictions.

@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_learnable_corpus(tmp_path / "c", per_split={"Train": 24, "Development": 12, "Test1": 10})


@case("data", "one stray `\"` in a labels CSV row",
      "that row dropped as `damaged row` (\"opens a quote … never closed\"), its line named; every other row kept "
      "(before: 46 rows merged into one field, Train 24 → 2, \"dropped 1 row\")")
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


@case("data", "a CSV line with an extra or a missing field, a NUL byte, a 200 kB field",
      "that line dropped as `damaged row`, naming the line and what is wrong; the rest kept")
@pytest.mark.parametrize(("line", "detail"), [
    ("MSP-PODCAST_0099_0001.wav,N,2.0,3.0,4.0,9,Male,Train,extra", "has 9 fields where the header has 8"),
    ("MSP-PODCAST_0099_0001.wav,N,2.0,3.0,4.0,9,Male", "has 7 fields where the header has 8"),
    ("MSP-PODCAST_0099_0001.wav,N,2.0,3.0,4.0,9\0,Male,Train", "NUL byte"),
    ("MSP-PODCAST_0099_0001.wav,N,2.0,3.0,4.0,9,Male,\"" + "x" * 200_000 + "\"", "a field longer than the field limit"),
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


@case("data", "a UTF-8 byte-order mark and CRLF line ends",
      "read like plain lines")
def test_bom_and_crlf_line_ends_read_like_plain_lines(corpus):
    before = _split_counts(corpus)
    labels = _labels(corpus)
    text = labels.read_text()
    labels.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    assert _split_counts(corpus) == before and not open_corpus(corpus).report.dropped


@case("data", "a column named twice, an empty file, a damaged header",
      "the file refused: one line naming it and the column / the header")
@pytest.mark.parametrize(("content", "message"), [
    ("FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set,EmoAct\n", "EmoAct appear more than once"),
    ("", "is empty (no header row)"),
    ('FileName,"EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set\n', "header row is damaged"),
])
def test_a_damaged_header_refuses_the_file(corpus, content, message):
    _labels(corpus).write_text(content)
    line = one_line_error(run("data", "info", corpus))
    assert "labels_consensus.csv" in line and message in line


@case("data", "a UTF-16 labels file",
      "\"is not UTF-8 text … save it as UTF-8\"")
def test_a_utf16_labels_file_is_named_as_not_utf8(corpus):
    labels = _labels(corpus)
    labels.write_bytes(labels.read_text().encode("utf-16"))
    line = one_line_error(run("data", "info", corpus))
    assert "labels_consensus.csv: the labels file is not UTF-8 text" in line


@case("data", "a stray quote in a manifest or a `data manifest` metadata CSV",
      "only that line dropped")
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


@case("data", "a stray quote in a predictions CSV or a `--transcripts` CSV",
      "refused at that line, naming it; quoted fields with commas and `\"\"` read correctly")
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


# ---------------------------------------------------------------------------------------------------------
# Long audio: every window reads only its span; predict streams the file in bounded chunks.

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from sertool.training.loop import train
    from tests.systems import small_config

    folder = tmp_path_factory.mktemp("faults")
    corpus = write_learnable_corpus(folder / "c", per_split={"Train": 12, "Development": 6})
    train(small_config(corpus), folder / "run")
    return folder / "run"


def _varying(path: Path, *, duration_s: float, sample_rate: int = 16_000, seed: int = 0) -> np.ndarray:
    """A tone whose loudness and pitch change over time, so that windows differ; written as 16-bit PCM."""
    t = np.arange(int(round(duration_s * sample_rate))) / sample_rate
    rng = np.random.default_rng(seed)
    loudness = 0.05 + 0.3 * (0.5 + 0.5 * np.sin(2 * np.pi * t / 17.0))
    wave = loudness * np.sin(2 * np.pi * (120 + 40 * np.sin(2 * np.pi * t / 7.0)) * t) + 0.01 * rng.normal(size=t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sample_rate, subtype="PCM_16")
    return sf.read(str(path), dtype="int16")[0]


@case("inference", "a long file given to `predict`",
      "every window reads only its span: each window's values equal those of its span cut out as a file of its own, "
      "and the file's row is their duration-weighted mean (before: the first window read the whole file, so it "
      "equalled the file's row and the file's row was wrong)")
def test_each_window_equals_its_span_cut_out_as_its_own_file(run_dir, tmp_path):
    from tests.test_windows import per_sample_reference

    samples = _varying(tmp_path / "long.wav", duration_s=23.0)
    out = tmp_path / "long.csv"
    assert run("predict", run_dir, tmp_path / "long.wav", "--window-s", "10", "--hop-s", "5", "--out", out).exit_code == 0
    long = read_predictions(out)
    spans = [(round(s.start_s * 16_000), round(s.end_s * 16_000)) for s in long.segments]
    assert spans == [(0, 160_000), (80_000, 240_000), (160_000, 320_000), (208_000, 368_000)]
    (tmp_path / "cut").mkdir()
    for start, end in spans:  # each window cut out as a file of its own, sample for sample
        sf.write(str(tmp_path / "cut" / f"{start:06d}.wav"), samples[start:end], 16_000, subtype="PCM_16")
    cut_out = tmp_path / "cut.csv"
    assert run("predict", run_dir, tmp_path / "cut", "--window-s", "10", "--out", cut_out).exit_code == 0
    cuts = read_predictions(cut_out).take([f"{start:06d}.wav" for start, _ in spans])
    segment_values = np.array([s.values for s in long.segments])
    np.testing.assert_allclose(segment_values, cuts.values, atol=1e-5)
    np.testing.assert_allclose(long.values[0], per_sample_reference(spans, segment_values), atol=2e-6)
    assert np.abs(segment_values[0] - long.values[0]).max() > 1e-3  # the first window is not the whole file


@case("inference", "memory of `predict` on long files",
      "no read longer than a window; pieces stream through the model in chunks, with the same result as in one go; 3 h "
      "vs 3 min peak RSS 1.17×, 482 MB (`make bench`, benchmark 8; before: 4.2 GB for 10 minutes)")
def test_windows_read_only_their_span_and_predict_streams_in_chunks(run_dir, tmp_path, monkeypatch):
    from sertool.data import audio
    from sertool.inference import workflows
    from sertool.inference.inputs import collect_inputs
    from sertool.inference.predictor import CheckpointPredictor, InferenceOptions

    _varying(tmp_path / "long.wav", duration_s=60.0)
    utterances, _ = collect_inputs([tmp_path / "long.wav"])
    options = InferenceOptions(device="cpu")
    whole = workflows.predict(run_dir, utterances, options=options, window_s=10.0, hop_s=5.0)

    reads, chunks = [], []
    real_read, real_predict = audio.sf.read, CheckpointPredictor.predict
    monkeypatch.setattr(audio.sf, "read", lambda file, **kw: reads.append(kw["stop"] - kw["start"]) or real_read(file, **kw))
    monkeypatch.setattr(CheckpointPredictor, "predict",
                        lambda self, pieces: chunks.append(len(pieces)) or real_predict(self, pieces))
    monkeypatch.setattr(workflows, "PREDICT_CHUNK_PIECES", 3)
    streamed = workflows.predict(run_dir, utterances, options=options, window_s=10.0, hop_s=5.0)
    assert len(reads) == 11 and max(reads) == 160_000  # 11 windows, none read past its 10 s
    assert chunks == [3, 3, 3, 2]
    np.testing.assert_allclose(streamed.values, whole.values, atol=1e-6)
    assert [(s.start_s, s.end_s) for s in streamed.segments] == [(s.start_s, s.end_s) for s in whole.segments]


# ---------------------------------------------------------------------------------------------------------
# Non-finite numbers: absurd audio, a diverged model, overflowing weights; no table written holds NaN.

def _write_tone_scaled(path: Path, scale: float, *, duration_s: float = 1.0) -> None:
    t = np.arange(int(duration_s * 16_000)) / 16_000
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 220 * t) * scale).astype(np.float32), 16_000, subtype="FLOAT")


@case("values", "a float WAV with samples ×1e30",
      "refused when read, in every command (\"samples reach 3e+29, over 100× full scale … divide it by its peak\"); a "
      "float file at 4× full scale is read (before: NaN predictions, exit 0)")
def test_absurd_float_amplitudes_are_refused_by_the_audio_reader(run_dir, tmp_path):
    from sertool.data.audio import load_audio

    _write_tone_scaled(tmp_path / "huge.wav", 1e30)
    line = one_line_error(run("predict", run_dir, tmp_path / "huge.wav"))
    assert "huge.wav: samples reach 3e+29, over 100× full scale" in line
    with pytest.raises(SertoolError, match="huge.wav: samples reach"):
        load_audio(tmp_path / "huge.wav")
    _write_tone_scaled(tmp_path / "hot.wav", 4.0)  # a float file a little over full scale is audio
    result = run("predict", run_dir, tmp_path / "hot.wav")
    assert result.exit_code == 0, result.output
    assert np.isfinite([float(v) for v in result.stdout.splitlines()[1].split(",")[1:]]).all()


@case("values", "a checkpoint whose weights are NaN, given to `predict` or `evaluate`",
      "stops at the first batch: \"the model's prediction for ID is not finite … a training that diverged\", naming "
      "the file (`run_model`'s `require_finite`, shared with validation)")
def test_a_model_with_non_finite_weights_is_refused_naming_the_input(run_dir, tmp_path):
    import torch

    from sertool.store.checkpoints import load_checkpoint, save_checkpoint

    payload = load_checkpoint(run_dir)
    key = next(name for name in payload["model_state"] if name.endswith("weight") and "head" in name)
    payload["model_state"][key] = torch.full_like(payload["model_state"][key], float("nan"))
    save_checkpoint({k: v for k, v in payload.items() if k not in ("format", "format_version")}, tmp_path / "nan.pt")
    write_tone(tmp_path / "clip.wav", duration_s=1.0)
    line = one_line_error(run("predict", tmp_path / "nan.pt", tmp_path / "clip.wav"))
    assert "clip.wav" in line and "not finite" in line and "diverged" in line
    corpus = run_dir.parent / "c"
    line = one_line_error(run("evaluate", tmp_path / "nan.pt", "--corpus", corpus, "--split", "Development"))
    assert "not finite" in line and "MSP-PODCAST_" in line


def _member_csvs(tmp_path: Path, *tables: list[tuple[str, float, float, float]]) -> list[Path]:
    paths = []
    for number, rows in enumerate(tables):
        path = tmp_path / f"member{number}.csv"
        path.write_text("FileName,EmoAct,EmoVal,EmoDom\n" + "".join(f"{r[0]},{r[1]},{r[2]},{r[3]}\n" for r in rows))
        paths.append(path)
    return paths


@pytest.fixture
def labelled_corpus(tmp_path) -> Path:
    return write_learnable_corpus(tmp_path / "lc", per_split={"Train": 4, "Development": 4})


def _ids(corpus: Path, split: str = "Development") -> list[str]:
    return [utt.id for utt in open_corpus(corpus).split(split)]


@case("values", "ensemble weights `1e308,1e308`; `inf`, `nan`, negative or all-zero weights",
      "weights scaled by the largest before normalising: the plain mean (before: every prediction 0, a submission of "
      "1.0s); `inf`, `nan` and negative weights refused by the flag's check, all-zero ones by the ensemble plan, each "
      "naming `--weights`")
def test_huge_ensemble_weights_give_the_weighted_mean(labelled_corpus, tmp_path):
    from sertool.inference.ensemble import mean_plan

    ids = _ids(labelled_corpus)
    a, b = _member_csvs(tmp_path, [(i, 2.0, 3.0, 4.0) for i in ids], [(i, 4.0, 5.0, 6.0) for i in ids])
    for weights, expected in (("1e308,1e308", [3.0, 4.0, 5.0]), ("1e308,1e307", [2 + 2 / 11, 3 + 2 / 11, 4 + 2 / 11])):
        out = tmp_path / "ens.csv"
        result = run("ensemble", a, b, "--corpus", labelled_corpus, "--weights", weights, "--out", out, "--force")
        assert result.exit_code == 0, result.output
        np.testing.assert_allclose(read_predictions(out).values, [expected] * len(ids), atol=1e-6)
    for weights in ("inf,1", "nan,1", "-1,2"):  # refused by the flag's own check, as a usage error
        result = run("ensemble", a, b, "--corpus", labelled_corpus, "--weights", weights)
        assert result.exit_code == 2 and "Invalid value for '--weights'" in result.output
    line = one_line_error(run("ensemble", a, b, "--corpus", labelled_corpus, "--weights", "0,0"))
    assert "--weights 0,0: weights must be finite, non-negative and not all 0" in line
    with pytest.raises(SertoolError, match="--weights inf,1: weights must be finite"):
        mean_plan(["a", "b"], [float("inf"), 1.0])  # the library checks as well as the flag


@case("values", "NaN or infinity in a value, a spread or a segment about to be written",
      "nothing written (CSV, JSON, stream, submission), the file and ids named")
def test_no_predictions_file_or_stream_holds_a_non_finite_value(tmp_path):
    import io

    from sertool.guards.outputs import OutputPlan
    from sertool.inference.predictions import Predictions, Segment, write_predictions
    from sertool.inference.writers import write_predictions_file, write_submission

    spread_nan = Predictions(["a.wav", "b.wav"], [[3, 4, 5], [3, 4, 5]], spread=[[0, 0, 0], [np.nan, 0, 0]])
    segment_inf = Predictions(["a.wav"], [[3, 4, 5]], segments=[Segment("a.wav", 0.0, 1.0, (3, np.inf, 5))])
    for predictions, bad in ((spread_nan, "b.wav"), (segment_inf, "a.wav")):
        for name in ("p.csv", "p.json"):
            outputs = OutputPlan()
            path = outputs.file(tmp_path / name, flag="--out")
            with pytest.raises(SertoolError, match=f"p.(csv|json): predictions for 1 file\\(s\\) are not finite "
                                                   f"numbers \\({bad}\\)"):
                write_predictions_file(outputs, path, predictions)
            assert sorted(tmp_path.iterdir()) == []  # neither the file nor a temporary
        stream = io.StringIO()
        with pytest.raises(SertoolError, match="not finite"):
            write_predictions(predictions, stream)
        assert stream.getvalue() == ""
    outputs = OutputPlan()
    path = outputs.file(tmp_path / "s.csv", flag="--submission")
    with pytest.raises(SertoolError, match="s.csv: predictions for 1 file"):
        write_submission(outputs, path, Predictions(["a.wav"], [[np.nan, 4, 5]]))
    assert sorted(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# Hostile names and paths; things that are not checkpoints; ensembles that include themselves; caches.

@case("inference", "a folder given to `predict` holding a file whose name is not valid UTF-8",
      "every file predicted; that one under an id with `\\xNN` escapes (before: UnicodeEncodeError, nothing predicted)")
def test_a_file_name_that_is_not_utf8_is_predicted_under_an_escaped_id(run_dir, tmp_path):
    import os

    folder = tmp_path / "in"
    write_tone(folder / "ok.wav", duration_s=1.0)
    write_tone(tmp_path / "cafe.wav", duration_s=1.0)
    os.rename(tmp_path / "cafe.wav", os.fsdecode(bytes(folder) + b"/caf\xe9.wav"))  # Latin-1: not valid UTF-8
    out, submission = tmp_path / "p.csv", tmp_path / "s.csv"
    result = run("predict", run_dir, folder, "--out", out, "--submission", submission)
    assert result.exit_code == 0, result.output
    assert read_predictions(out).ids == ["caf\\xe9.wav", "ok.wav"]  # both predicted, the bytes kept as escapes
    assert submission.read_bytes().decode("utf-8").splitlines()[1].startswith("caf\\xe9.wav,")


@case("checkpoints", "a 0-byte `.pt`, a WAV, a text file, a foreign dict, a sertool-format dict without a config, "
      "given as a checkpoint or an ensemble member",
      "one line naming the file and what it is (\"an empty file\", \"an audio file\", \"not a sertool checkpoint\", "
      "\"it has no config\"; before: IndexError / KeyError)")
@pytest.mark.parametrize("kind", ["empty", "wav", "text", "foreign dict", "no config"])
def test_things_that_are_not_checkpoints_are_named_as_such(run_dir, tmp_path, kind):
    import torch

    fake = tmp_path / "model.pt"
    write_tone(tmp_path / "clip.wav", duration_s=1.0)
    if kind == "empty":
        fake.write_bytes(b"")
    elif kind == "wav":
        fake.write_bytes((tmp_path / "clip.wav").read_bytes())
    elif kind == "text":
        fake.write_text("epoch,loss\n1,0.5\n")
    elif kind == "foreign dict":
        torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, fake)
    else:
        torch.save({"format": "sertool-checkpoint", "format_version": 1, "model_state": {}}, fake)
    expected = {"empty": "an empty file", "wav": "an audio file", "text": "a text file",
                "foreign dict": "not a sertool checkpoint", "no config": "damaged sertool checkpoint: it has no config"}
    for args in (["predict", fake, tmp_path / "clip.wav"],
                 ["ensemble", run_dir, fake, "--corpus", run_dir.parent / "c"]):
        line = one_line_error(run(*args))
        assert "model.pt" in line and expected[kind] in line, args
    line = one_line_error(run("predict", tmp_path / "clip.wav", tmp_path / "clip.wav"))  # audio given as CKPT
    assert "clip.wav: not a readable checkpoint (an audio file" in line


@case("inference", "an ensemble JSON that lists itself, or two that list each other",
      "\"an ensemble that includes itself (a.json → b.json → a.json)\" from `predict`, `evaluate` and `ensemble` "
      "(before: RecursionError)")
def test_an_ensemble_that_includes_itself_is_refused_naming_the_chain(run_dir, tmp_path):
    import json

    corpus = run_dir.parent / "c"
    assert run("ensemble", run_dir, run_dir / "best.pt", "--corpus", corpus, "--save", tmp_path / "a.json").exit_code == 0
    plan = json.loads((tmp_path / "a.json").read_text())
    (tmp_path / "self.json").write_text(json.dumps({**plan, "members": ["self.json", plan["members"][1]]}))
    (tmp_path / "a.json").write_text(json.dumps({**plan, "members": ["b.json", plan["members"][1]]}))
    (tmp_path / "b.json").write_text(json.dumps({**plan, "members": [plan["members"][1], "a.json"]}))
    write_tone(tmp_path / "clip.wav", duration_s=1.0)
    line = one_line_error(run("predict", tmp_path / "self.json", tmp_path / "clip.wav"))
    assert "an ensemble that includes itself" in line and "self.json → " in line
    line = one_line_error(run("evaluate", tmp_path / "a.json", "--corpus", corpus))
    assert f"{tmp_path / 'a.json'} → {tmp_path / 'b.json'} → {tmp_path / 'a.json'}" in line
    line = one_line_error(run("ensemble", tmp_path / "b.json", run_dir, "--corpus", corpus))
    assert "an ensemble that includes itself" in line


@pytest.fixture(scope="module")
def mm_run(tmp_path_factory) -> Path:
    """A tiny MM system (fbank + a tiny random BERT on the transcripts), and a tiny ASR model beside it."""
    from sertool.training.loop import train
    from tests.systems import small_config
    from tests.tiny_asr import save_tiny_asr
    from tests.tiny_text import save_tiny_text_encoder

    folder = tmp_path_factory.mktemp("mm")
    corpus = write_learnable_corpus(folder / "c", per_split={"Train": 8, "Development": 4})
    config = small_config(corpus, epochs=1)
    config.model.text = True
    config.model.text_model = str(save_tiny_text_encoder(folder / "text"))
    config.data.cache_dir = str(folder / "train-cache")
    train(config, folder / "mm")
    save_tiny_asr(folder / "asr")
    return folder / "mm"


@case("inference", "`HOME` that cannot hold `~/.cache`, a `--cache-dir` that is a file, with an MM model; an ASR cache "
      "there",
      "one warning naming the folder, the same predictions, computed in memory (before: a traceback)")
def test_an_unwritable_cache_is_a_warning_and_predictions_are_unchanged(mm_run, tmp_path, monkeypatch, caplog):
    from sertool.data.audio import load_audio
    from sertool.models.asr import Transcriber, TranscriptCache

    write_tone(tmp_path / "clip.wav", duration_s=1.0)
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "clip.txt").write_text("i am very happy\n")
    args = ["predict", mm_run, tmp_path / "clip.wav", "--transcripts", tmp_path / "texts"]
    monkeypatch.delenv("SERTOOL_CACHE", raising=False)
    expected = run(*args, "--cache-dir", tmp_path / "cache")
    assert expected.exit_code == 0, expected.output
    (tmp_path / "not-a-folder").write_text("a file")
    for cache_args, home in (([], tmp_path / "not-a-folder"), (["--cache-dir", tmp_path / "not-a-folder"], tmp_path)):
        monkeypatch.setenv("HOME", str(home))  # a HOME that cannot hold ~/.cache, or a --cache-dir that is a file
        caplog.clear()
        result = run(*args, *cache_args)
        assert result.exit_code == 0, result.output
        assert result.stdout == expected.stdout
        assert "going on without caching" in caplog.text and "not-a-folder" in caplog.text
    transcriber = Transcriber(str(mm_run.parent / "asr"), device="cpu")
    cache = TranscriptCache(tmp_path / "not-a-folder" / "transcripts", transcriber)
    assert cache.get([tmp_path / "clip.wav"]) == transcriber.transcribe([load_audio(tmp_path / "clip.wav")])


@case("inference", "an MM model predicting a long file streamed in chunks",
      "the ASR model is built and its weights loaded once, and the text-embedding cache files read once, for all "
      "chunks (without keeping them in the predictor: once per chunk, i.e. Whisper's 3 GB per chunk)")
def test_a_streamed_mm_prediction_loads_asr_once_and_keeps_its_caches(mm_run, tmp_path, monkeypatch):
    from sertool.cache import vectors as vector_codec
    from sertool.inference import workflows
    from sertool.inference.inputs import collect_inputs
    from sertool.inference.predictor import InferenceOptions
    from sertool.models import asr

    _varying(tmp_path / "talk.wav", duration_s=8.0)
    utterances, _ = collect_inputs([tmp_path / "talk.wav"])
    options = InferenceOptions(device="cpu", asr=str(mm_run.parent / "asr"), cache_dir=str(tmp_path / "cache"))
    made, loads, reads = [], [], []
    real_init, real_load, real_read = asr.Transcriber.__init__, asr.Transcriber._load, vector_codec.load_file
    monkeypatch.setattr(asr.Transcriber, "__init__", lambda self, *a, **k: made.append(1) or real_init(self, *a, **k))
    monkeypatch.setattr(asr.Transcriber, "_load",  # counts the loads of weights, not the calls
                        lambda self: (self._model is None and loads.append(1)) or real_load(self))
    monkeypatch.setattr(vector_codec, "load_file", lambda path: reads.append(path) or real_read(path))
    monkeypatch.setattr(workflows, "PREDICT_CHUNK_PIECES", 1)
    streamed = workflows.predict(mm_run, utterances, options=options, window_s=2.0, hop_s=2.0)
    assert len(streamed.segments) == 4  # four chunks of one window each
    assert (len(made), len(loads), reads) == (1, 1, [])  # not once per chunk
    monkeypatch.setattr(workflows, "PREDICT_CHUNK_PIECES", 256)
    whole = workflows.predict(mm_run, utterances, options=options, window_s=2.0, hop_s=2.0)  # from the caches now
    np.testing.assert_allclose(streamed.values, whole.values, atol=1e-6)
    assert len(loads) == 1  # every window's transcript came from the ASR cache


# ---------------------------------------------------------------------------------------------------------
# Ensemble members on different scales.

@case("values", "an ensemble member (or a predictions CSV given as `CKPT`) on 0..1 or 0..100",
      "refused, naming the member, the attribute, its median and range (rule: a median outside 1..7); a member "
      "overshooting to 0.6 or 7.4 is accepted (before: averaged with the 1..7 members without a word)")
def test_a_member_on_another_scale_is_refused_naming_it(labelled_corpus, tmp_path):
    ids = _ids(labelled_corpus)
    values = np.random.default_rng(0).uniform(1.5, 6.5, size=(len(ids), 3))
    overshoot = values.copy()
    overshoot[0] = (0.6, 7.4, 4.0)  # a linear head overshoots the scale a little: fine
    tables = [[(i, *row) for i, row in zip(ids, table, strict=True)] for table in (values, (values - 1) / 6, values * 14, overshoot)]
    good, unit, percent, over = _member_csvs(tmp_path, *tables)
    for member in (unit, percent):  # the same predictions on 0..1 and on 0..100
        line = one_line_error(run("ensemble", good, member, "--corpus", labelled_corpus))
        assert f"{member}: its arousal values (median" in line and "not on the 1..7 rater scale" in line
        line = one_line_error(run("predict", member, "--corpus", labelled_corpus, "--split", "Development"))
        assert str(member) in line and "rater scale" in line
    result = run("ensemble", good, over, "--corpus", labelled_corpus)
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------------------------------------------------
# make demo keeps every file it announces.

@case("inference", "`make demo`",
      "every file it builds and announces is kept: `.SECONDARY:` (no target is a disposable intermediate) and the "
      "ensemble depends on both checkpoints (before: its last line was `rm demo/runs/*/best.pt`, and "
      "`demo/ensemble.json` then failed) (the test reads `make -n`; also shown by a real `make demo` then `sertool "
      "predict demo/ensemble.json`)")
def test_make_demo_deletes_nothing_it_builds_or_announces(tmp_path):
    import shutil
    import subprocess

    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    demo = tmp_path / "demo"
    plan = subprocess.run([make, "-n", "-C", str(Path(__file__).resolve().parent.parent), "demo", f"DEMO={demo}",
                           f"VENV={tmp_path / 'venv'}"], capture_output=True, text=True, check=True).stdout.splitlines()
    commands = [line for line in plan if not line.startswith("echo")]
    assert [line for line in commands if line.split()[:1] == ["rm"]] == []  # make removed the checkpoints here
    announced = [word.strip("\"").rstrip("/") for line in plan if line.startswith("echo") for word in line.split()
                 if word.startswith(str(demo))]
    # two plots, the two runs' training curves, the predictions folder, the ensemble, the baseline folder, the
    # submission
    assert len(announced) == 8
    trained = [line.split("--out ")[1].split()[0] for line in commands if " train " in line]
    for path in announced:
        if path.endswith("/curves.png"):  # train writes it into its run folder
            assert path.removesuffix("/curves.png") in trained, path
            continue
        assert any(path in line for line in commands), f"{path} is announced but no command makes it"
    ensembled = next(line for line in commands if "--save" in line)
    assert sorted(trained) == sorted(word for word in ensembled.split() if "/runs/" in word)


# ---------------------------------------------------------------------------------------------------------
# Our own adversary: exotic and corrupt audio, hostile paths, odd splits and ids, damaged plans, outputs.

def _int16_tone(duration_s: float = 1.0, sample_rate: int = 16_000) -> np.ndarray:
    t = np.arange(int(round(duration_s * sample_rate))) / sample_rate
    return np.round(9_000 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.int16)


def _predict_folder(run_dir: Path, folder: Path, out: Path, *extra) -> dict[str, np.ndarray]:
    result = run("predict", run_dir, folder, "--out", out, *extra)
    assert result.exit_code == 0, result.output
    table = read_predictions(out)
    assert np.isfinite(table.values).all()
    return dict(zip(table.ids, table.values, strict=True))


@case("data", "the same samples as 24- and 32-bit PCM, float32, float64, FLAC, 6 identical channels, FLAC data in a "
      "`.wav`",
      "the same predictions as 16-bit PCM (within 1e-5)")
@case("data", "8-bit unsigned PCM, IMA and MS ADPCM, µ-law, A-law, Ogg Vorbis",
      "decoded, finite predictions near the PCM ones")
def test_exotic_encodings_predict_like_plain_pcm(run_dir, tmp_path):
    samples = _int16_tone()
    folder = tmp_path / "in"
    folder.mkdir()
    as_float = samples / 32768.0
    for subtype in ("PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "PCM_U8", "IMA_ADPCM", "MS_ADPCM", "ULAW", "ALAW"):
        sf.write(str(folder / f"{subtype}.wav"), as_float, 16_000, subtype=subtype)
    sf.write(str(folder / "flac.flac"), samples, 16_000, subtype="PCM_16")
    sf.write(str(folder / "vorbis.ogg"), as_float, 16_000)
    sf.write(str(folder / "six.wav"), np.stack([samples] * 6, axis=1), 16_000, subtype="PCM_16")
    (folder / "flac_named.wav").write_bytes((folder / "flac.flac").read_bytes())  # content decides, not the name
    values = _predict_folder(run_dir, folder, tmp_path / "p.csv")
    reference = values["PCM_16.wav"]
    for exact in ("PCM_24.wav", "PCM_32.wav", "FLOAT.wav", "DOUBLE.wav", "flac.flac", "six.wav", "flac_named.wav"):
        np.testing.assert_allclose(values[exact], reference, atol=1e-5, err_msg=exact)  # the same samples
    for lossy in ("PCM_U8.wav", "IMA_ADPCM.wav", "MS_ADPCM.wav", "ULAW.wav", "ALAW.wav", "vorbis.ogg"):
        assert np.abs(values[lossy] - reference).max() < 1.0, lossy  # decoded, finite, near


@case("data", "11,025 Hz mono, 44.1 kHz stereo, 384 kHz",
      "resampled and predicted")
@case("data", "a header that says 1 Hz (16,000 samples made 4.4 hours to resample: `predict` ran for minutes)",
      "\"its header gives a sample rate of 1 Hz, outside the 4,000–384,000 Hz of speech recordings\"; in a corpus the "
      "row is dropped as unreadable audio")
def test_odd_and_damaged_sample_rates(run_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(str(folder / "r11025.wav"), _int16_tone(sample_rate=11_025), 11_025)
    sf.write(str(folder / "r44100_stereo.wav"), np.stack([_int16_tone(sample_rate=44_100)] * 2, axis=1), 44_100)
    sf.write(str(folder / "r384k.wav"), _int16_tone(0.5, sample_rate=384_000), 384_000)
    values = _predict_folder(run_dir, folder, tmp_path / "p.csv")
    assert sorted(values) == ["r11025.wav", "r384k.wav", "r44100_stereo.wav"]
    sf.write(str(tmp_path / "one_hz.wav"), _int16_tone(sample_rate=16_000), 1)  # 16,000 samples "at 1 Hz": 4.4 h
    line = one_line_error(run("predict", run_dir, tmp_path / "one_hz.wav"))
    assert "one_hz.wav: its header gives a sample rate of 1 Hz" in line


@case("data", "a WAV header with 0 channels",
      "\"not a readable audio file (Channel count is zero.)\" (libsndfile's own words, without the path twice as "
      "bytes)")
@case("data", "a WAV whose data chunk claims 1 GB",
      "the samples that are there are read: the same prediction as the intact file")
def test_headers_that_lie(run_dir, tmp_path):
    import struct

    sf.write(str(tmp_path / "good.wav"), np.stack([_int16_tone()] * 2, axis=1), 16_000, subtype="PCM_16")
    data = bytearray((tmp_path / "good.wav").read_bytes())
    fmt, chunk = data.find(b"fmt "), data.find(b"data")
    no_channels = bytearray(data)
    no_channels[fmt + 10:fmt + 12] = struct.pack("<H", 0)
    (tmp_path / "no_channels.wav").write_bytes(no_channels)
    line = one_line_error(run("predict", run_dir, tmp_path / "no_channels.wav"))
    assert "no_channels.wav: not a readable audio file (Channel count is zero" in line
    oversized = bytearray(data)
    oversized[chunk + 4:chunk + 8] = struct.pack("<I", 10**9)  # claims 1 GB of samples
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "oversized.wav").write_bytes(oversized)
    (tmp_path / "in" / "good.wav").write_bytes(data)
    values = _predict_folder(run_dir, tmp_path / "in", tmp_path / "p.csv")
    np.testing.assert_allclose(values["oversized.wav"], values["good.wav"], atol=1e-6)  # read what is there


@case("values", "silence, a DC offset, a full-scale square wave",
      "finite predictions")
def test_silence_and_a_constant_signal_give_finite_predictions(run_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(str(folder / "silence.wav"), np.zeros(16_000, dtype=np.int16), 16_000)
    sf.write(str(folder / "dc.wav"), np.full(16_000, 0.5), 16_000, subtype="FLOAT")
    sf.write(str(folder / "full_scale_square.wav"), np.sign(np.sin(np.arange(16_000) / 5.0)), 16_000, subtype="FLOAT")
    assert sorted(_predict_folder(run_dir, folder, tmp_path / "p.csv")) == ["dc.wav", "full_scale_square.wav",
                                                                            "silence.wav"]


@case("inference", "a text file named `.wav` in a folder given to `predict`",
      "one line naming it (\"Format not recognised\"); `--out` not written")
def test_a_non_audio_file_in_a_folder_is_named_and_nothing_is_written(run_dir, tmp_path):
    folder = tmp_path / "in"
    write_tone(folder / "a.wav", duration_s=1.0)
    (folder / "notes.wav").write_text("meeting notes, not audio\n")
    out = tmp_path / "p.csv"
    line = one_line_error(run("predict", run_dir, folder, "--out", out))
    assert "notes.wav: not a readable audio file (Format not recognised" in line
    assert not out.exists()


@case("inference", "spaces, accents and CJK in names, a folder named `dir.wav`, a linked folder, a link loop",
      "every file predicted once under its path below the folder; the walk ends; manifests read the same names")
def test_hostile_paths_spaces_unicode_folders_named_wav_and_link_loops(run_dir, tmp_path):
    import os

    folder = tmp_path / "in put"
    write_tone(folder / "a b.wav", duration_s=1.0)
    write_tone(folder / "ünï cødé — 声.wav", duration_s=1.0)
    write_tone(folder / "dir.wav" / "inside.wav", duration_s=1.0)
    write_tone(tmp_path / "elsewhere" / "linked.wav", duration_s=1.0)
    os.symlink(tmp_path / "elsewhere", folder / "link to folder")
    os.symlink(folder, folder / "dir.wav" / "loop")  # a link back up: the walk must end
    values = _predict_folder(run_dir, folder, tmp_path / "p.csv")
    assert sorted(values) == ["a b.wav", "dir.wav/inside.wav", "link to folder/linked.wav", "ünï cødé — 声.wav"]
    manifest = tmp_path / "m.csv"
    manifest.write_text('path,split\n"in put/a b.wav",x\nin put/ünï cødé — 声.wav,x\n')
    assert [utt.id for utt in open_corpus(manifest).utterances] == ["a b.wav", "ünï cødé — 声.wav"]


@case("inference", "a `.wav` link to nowhere in a folder",
      "\"a link to a file that does not exist\", naming it (before: silently left out)")
def test_a_dangling_audio_link_is_named(run_dir, tmp_path):
    import os

    folder = tmp_path / "in"
    write_tone(folder / "a.wav", duration_s=1.0)
    os.symlink(tmp_path / "gone.wav", folder / "dangling.wav")
    line = one_line_error(run("predict", run_dir, folder))
    assert "dangling.wav: a link to a file that does not exist" in line


@case("inference", "`--split` that does not exist (`Validation`, `train`), for `predict`, `evaluate`, `ensemble`; a "
      "split whose every clip is empty",
      "one line listing the splits the corpus has")
def test_a_split_that_does_not_exist_or_lost_all_its_rows(run_dir, tmp_path):
    import shutil

    corpus = tmp_path / "c"
    shutil.copytree(run_dir.parent / "c", corpus)
    for command in (["predict", run_dir, "--corpus", corpus, "--split", "Validation"],
                    ["evaluate", run_dir, "--corpus", corpus, "--split", "Test2"],
                    ["ensemble", run_dir, run_dir, "--corpus", corpus, "--split", "train"]):
        line = one_line_error(run(*command))
        assert "has no utterances in that split; it has Train, Development" in line, command
    for audio in (corpus / "Audios").glob("MSP-PODCAST_*_1*.wav"):  # every Development clip
        audio.write_bytes(b"")
    line = one_line_error(run("evaluate", run_dir, "--corpus", corpus, "--split", "Development"))
    assert "--split Development" in line and "it has Train" in line


@case("inference", "a manifest with a repeated id, given to `predict`",
      "the repeat dropped and named (line 3), the rest predicted; with `--submission` refused, nothing written")
def test_duplicated_ids_in_a_manifest_predict_once_and_block_a_submission(run_dir, tmp_path):
    write_tone(tmp_path / "a.wav", duration_s=1.0)
    write_tone(tmp_path / "b.wav", duration_s=1.2)
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path,split\nx,a.wav,Test3\nx,b.wav,Test3\ny,b.wav,Test3\n")
    result = run("predict", run_dir, manifest, "--out", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    assert "dropped 1 row (1 duplicate id)" in result.output and "m.csv:3" in result.output
    assert read_predictions(tmp_path / "p.csv").ids == ["x", "y"]
    line = one_line_error(run("predict", run_dir, manifest, "--submission", tmp_path / "s.csv"))
    assert "m.csv:3" in line and "duplicate id" in line and not (tmp_path / "s.csv").exists()


@case("inference", "a predictions CSV used as a model that lacks a file / has extra files",
      "\"no prediction for 1 of 4 files: ID\"; extra rows are ignored and the split's rows scored")
def test_predictions_csvs_with_missing_or_extra_ids_as_a_model(labelled_corpus, tmp_path):
    ids = _ids(labelled_corpus)
    values = np.random.default_rng(1).uniform(1.5, 6.5, size=(len(ids) + 2, 3))
    rows = [(i, *row) for i, row in zip([*ids, "extra_1.wav", "extra_2.wav"], values, strict=True)]
    missing, extra = _member_csvs(tmp_path, rows[1:len(ids)], rows[::-1])
    line = one_line_error(run("evaluate", missing, "--corpus", labelled_corpus))
    assert f"{missing}: no prediction for 1 of {len(ids)} files: {ids[0]}" in line
    out = tmp_path / "scored.csv"
    result = run("evaluate", extra, "--corpus", labelled_corpus, "--out", out)
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(read_predictions(out).values, values[:len(ids)], atol=1e-6)  # the split's rows only


@case("inference", "an ensemble plan with a byte-order mark and CRLF; truncated; naming a member that is gone",
      "read as usual (before: \"Unexpected UTF-8 BOM\"); \"not a readable JSON ensemble plan\"; \"gone-run: no such "
      "checkpoint\"")
def test_an_ensemble_plan_with_a_bom_crlf_truncation_or_a_missing_member(run_dir, tmp_path):
    import json

    corpus = run_dir.parent / "c"
    plan = tmp_path / "ens.json"
    assert run("ensemble", run_dir, run_dir / "best.pt", "--corpus", corpus, "--save", plan).exit_code == 0
    text = plan.read_text()
    write_tone(tmp_path / "clip.wav", duration_s=1.0)
    plan.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    assert run("predict", plan, tmp_path / "clip.wav").exit_code == 0
    plan.write_text(text[: len(text) // 2])
    line = one_line_error(run("predict", plan, tmp_path / "clip.wav"))
    assert "ens.json: not a readable JSON ensemble plan" in line
    document = json.loads(text)
    document["members"][0] = "gone-run"
    plan.write_text(json.dumps(document))
    line = one_line_error(run("predict", plan, tmp_path / "clip.wav"))
    assert "gone-run: no such checkpoint" in line


@case("inference", "`--submission` onto an existing folder with `--force`; `--out` in folders that do not exist; "
      "`--out p.txt`; a too-short file with `--submission`",
      "one line, the folder untouched; folders created; \"unknown output format 'txt'\"; refused before any "
      "prediction, no submission written")
def test_submission_and_output_edge_cases(run_dir, tmp_path):
    write_tone(tmp_path / "clip.wav", duration_s=1.0)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    line = one_line_error(run("predict", run_dir, tmp_path / "clip.wav", "--submission", tmp_path / "taken", "--force"))
    assert "taken" in line and (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    deep = tmp_path / "new" / "deeper" / "p.json"
    assert run("predict", run_dir, tmp_path / "clip.wav", "--out", deep).exit_code == 0
    assert deep.is_file()
    line = one_line_error(run("predict", run_dir, tmp_path / "clip.wav", "--out", tmp_path / "p.txt"))
    assert "p.txt: unknown output format 'txt'" in line
    write_tone(tmp_path / "blip.wav", duration_s=0.05)
    line = one_line_error(run("predict", run_dir, tmp_path / "clip.wav", tmp_path / "blip.wav", "--submission",
                              tmp_path / "s.csv"))
    assert "blip.wav" in line and not (tmp_path / "s.csv").exists()  # refused before any prediction


@case("data", "a manifest row whose `path` is a folder",
      "row dropped, \"not a file\"")
def test_a_manifest_row_whose_path_is_a_folder_is_dropped_and_named(tmp_path):
    write_tone(tmp_path / "a.wav", duration_s=0.5)
    (tmp_path / "folder.wav").mkdir()
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,split\na.wav,Test3\nfolder.wav,Test3\n")
    opened = open_corpus(manifest)
    assert [utt.id for utt in opened.utterances] == ["a.wav"]
    [problem] = opened.report.dropped
    assert problem.where == f"{manifest}:3" and "folder.wav: not a file" in problem.detail


@case("inference", "files of exactly one window, shorter, and one sample longer",
      "no segments for the first two; two windows for the last, the second end-aligned")
def test_files_of_exactly_one_window_or_shorter_get_no_segments(run_dir, tmp_path):
    folder = tmp_path / "in"
    write_tone(folder / "exact.wav", duration_s=3.0)
    write_tone(folder / "shorter.wav", duration_s=2.5)
    write_tone(folder / "one_more_sample.wav", duration_s=3.0 + 1 / 16_000)
    out = tmp_path / "p.csv"
    assert run("predict", run_dir, folder, "--window-s", "3", "--hop-s", "3", "--out", out).exit_code == 0
    segments = read_predictions(out).segments
    assert sorted({s.id for s in segments}) == ["one_more_sample.wav"]
    spans = [(s.start_s, s.end_s) for s in segments]
    np.testing.assert_allclose(spans, [(0.0, 3.0), (1 / 16_000, 3.0 + 1 / 16_000)], atol=1e-6)  # 6 decimals in CSV
