"""evaluate, predict and ensemble end to end, through the CLI where the user meets them."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from sertool.cli.commands import cli
from sertool.data.corpus import open_corpus
from sertool.inference.predictions import read_predictions, read_predictions_and_labels
from sertool.inference.predictor import InferenceOptions, open_predictor
from sertool.models.bootstrap import resample_indices
from sertool.models.ccc import ccc_scores
from sertool.store.checkpoints import load_checkpoint
from sertool.training.loop import train
from tests.corpus_files import write_learnable_corpus, write_tone
from tests.systems import small_config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = write_learnable_corpus(tmp_path_factory.mktemp("corpus") / "c",
                                  per_split={"Train": 16, "Development": 8, "Test1": 6})
    for i in range(3):  # unlabelled Test3 audio, as in the challenge
        write_tone(root / "Audios" / f"MSP-PODCAST_test3_{i + 1:04d}.wav", duration_s=0.8 + 0.3 * i)
    return root


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("runs")
    systems = {"a": small_config(corpus), "b": small_config(corpus, lr_heads=3e-3), "ox": small_config(corpus)}
    systems["b"].seed = 1
    systems["ox"].data.dev_ox_to_train = True  # trains on Development's O/X too
    for name, config in systems.items():
        train(config, folder / name)
    return {name: folder / name for name in systems}


def run(*args: str):
    result = CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)
    return result


def test_evaluate_scores_equal_an_independent_ccc_of_its_csv(corpus, runs, tmp_path):
    out = tmp_path / "dev.csv"
    result = run("evaluate", runs["a"], "--corpus", corpus, "--split", "Development", "--out", out,
                 "--plot", tmp_path / "dev.png")
    assert result.exit_code == 0, result.output
    predictions, labels = read_predictions_and_labels(out)
    corpus_labels = {u.id: u.labels() for u in open_corpus(corpus).split("Development")}
    assert labels.tolist() == [list(corpus_labels[i]) for i in predictions.ids]
    expected = ccc_scores(predictions.values, labels)
    assert f"{expected['average']:.4f}" in result.output
    assert "gender acc" in result.output  # the system has a gender head
    assert (tmp_path / "dev.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_leaves_out_what_the_model_trained_on(corpus, runs, tmp_path):
    development = open_corpus(corpus).split("Development")
    moved = {utt.id for utt in development if utt.emo_class in ("O", "X")}
    assert moved and load_checkpoint(runs["ox"])["training_ids"] == sorted(
        [utt.id for utt in open_corpus(corpus).split("Train")] + list(moved))
    result = run("evaluate", runs["ox"], "--corpus", corpus, "--split", "Development", "--out", tmp_path / "ox.csv")
    assert result.exit_code == 0, result.output
    predictions, labels = read_predictions_and_labels(tmp_path / "ox.csv")
    assert set(predictions.ids) == {utt.id for utt in development} - moved
    assert f"{ccc_scores(predictions.values, labels)['average']:.4f}" in result.output
    assert f"{len(moved)} utterances of the split are left out of these scores: trained on" in result.output
    refused = run("evaluate", runs["ox"], "--corpus", corpus, "--split", "Train")
    assert refused.exit_code == 2 and "trained on all 16 of its utterances" in refused.output
    # evaluate wrote only the scored rows; a predictions file does not say what made it, and the output says so.
    reread = run("evaluate", tmp_path / "ox.csv", "--corpus", corpus, "--split", "Development")
    assert reread.exit_code == 2 and "no prediction for 2 of 8 files" in reread.output
    unknown = run("evaluate", runs["ox"] / "best.pt", "--corpus", corpus, "--split", "Test1", "--out", tmp_path / "t.csv")
    assert "left out" not in unknown.output
    assert "unknown" in run("evaluate", tmp_path / "t.csv", "--corpus", corpus, "--split", "Test1").output


def test_ensembles_are_scored_on_the_intersection_of_held_out_sets(corpus, runs, tmp_path):
    from sertool.inference.workflows import ensemble

    development = open_corpus(corpus).split("Development")
    held_out = [utt for utt in development if utt.emo_class not in ("O", "X")]
    result = ensemble([runs["a"], runs["ox"]], development, split="Development", options=InferenceOptions())
    labels = np.array([utt.labels() for utt in held_out])
    ids = [utt.id for utt in held_out]
    for scores, path in zip(result.member_scores, (runs["a"], runs["ox"]), strict=True):
        alone = open_predictor(path).predict(held_out).predictions.values
        assert scores.ccc == pytest.approx(ccc_scores(alone, labels))  # the members on the same utterances
        assert (scores.num_utterances, scores.excluded_trained_on) == (len(held_out), 2)
    assert result.ensemble_scores.ccc == pytest.approx(ccc_scores(result.predictions.take(ids).values, labels))
    assert len(result.predictions.ids) == len(development)  # the predictions still cover every utterance
    chosen = ensemble([runs["a"], runs["ox"]], development, split="Development", options=InferenceOptions(),
                      per_attribute=True)
    members = [open_predictor(path).predict(held_out).predictions.values for path in (runs["a"], runs["ox"])]
    for name in ("arousal", "valence", "dominance"):
        best = max(ccc_scores(m, labels)[name] for m in members + [np.mean(members, axis=0)])
        assert chosen.plan.development_ccc[name] == pytest.approx(best)  # chosen on held-out utterances only


def _interval_rows(output: str, title: str) -> list[str]:
    """The table rows holding intervals after ``title`` (numbers never wrap, names may)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if title in line)
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("└"):
            return rows
        if "[" in line:
            rows.append(line)
    return rows


def _percentile_interval(values: np.ndarray) -> str:
    low, high = np.percentile(values, [2.5, 97.5])
    return f"[{low:.3f}, {high:.3f}]"


def test_evaluate_bootstrap_prints_intervals_of_an_independent_resampling_loop(corpus, runs, tmp_path):
    result = run("evaluate", runs["a"], "--corpus", corpus, "--split", "Development", "--out", tmp_path / "a.csv",
                 "--bootstrap", "1000", "--bootstrap-seed", "4")
    assert result.exit_code == 0, result.output
    predictions, labels = read_predictions_and_labels(tmp_path / "a.csv")
    loop = [ccc_scores(predictions.values[rows], labels[rows])
            for rows in resample_indices(len(labels), range(1000), seed=4)]
    line = _interval_rows(result.output, "95 % confidence intervals")[0]
    for name in ("arousal", "valence", "dominance", "average"):
        assert _percentile_interval(np.array([scores[name] for scores in loop])) in line, name
    again = run("evaluate", runs["a"], "--corpus", corpus, "--split", "Development", "--bootstrap", "1000",
                "--bootstrap-seed", "4")
    assert line in again.output  # seeded: the same intervals
    from sertool.core.errors import SertoolError
    from sertool.inference.workflows import evaluate

    with pytest.raises(SertoolError, match="--bootstrap: 1 scored utterance"):
        evaluate(runs["a"], open_corpus(corpus).split("Development")[:1], split="Development",
                 options=InferenceOptions(), bootstrap=10)


def test_ensemble_bootstrap_gives_the_gain_over_each_member_a_paired_interval(corpus, runs, tmp_path):
    members = []
    for name in ("a", "b"):
        assert run("evaluate", runs[name], "--corpus", corpus, "--split", "Test1", "--out",
                   tmp_path / f"{name}.csv").exit_code == 0
        members.append(read_predictions_and_labels(tmp_path / f"{name}.csv"))
    result = run("ensemble", runs["a"], runs["b"], "--corpus", corpus, "--split", "Test1", "--bootstrap", "500")
    assert result.exit_code == 0, result.output
    labels = members[0][1]
    values = [predictions.values for predictions, _ in members]
    mean = np.mean(values, axis=0)
    gains = {index: [] for index in range(2)}
    for rows in resample_indices(len(labels), range(500), seed=0):
        ensemble_scores = ccc_scores(mean[rows], labels[rows])
        for index in range(2):
            gains[index].append(ensemble_scores["average"] - ccc_scores(values[index][rows], labels[rows])["average"])
    ci_lines = _interval_rows(result.output, "gain over each member")
    for index in range(2):
        low, high = np.percentile(gains[index], [2.5, 97.5])
        assert f"[{low:+.3f}, {high:+.3f}]" in ci_lines[index]


def _score_rows(output: str) -> list[list[str]]:
    """The cells after the system name of every row of the score table (names may fold, numbers never do)."""
    rows = []
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) >= 6 and cells[1].replace(",", "").isdigit():
            rows.append(cells[1:6])
    return rows


def _as_printed(system: dict) -> list[str]:
    return [f"{system['utterances']:,}", *(f"{system['ccc'][name]:.4f}"
                                           for name in ("arousal", "valence", "dominance", "average"))]


def test_scores_json_holds_the_numbers_of_the_printed_table(corpus, runs, tmp_path):
    for command in (["evaluate", runs["ox"]], ["ensemble", runs["a"], runs["ox"]]):
        table = run(*command, "--corpus", corpus, "--split", "Development", "--scores", tmp_path / "s.json", "--force")
        assert table.exit_code == 0, table.output
        document = json.loads((tmp_path / "s.json").read_text())
        assert document["split"] == "Development" and document["corpus"] == str(corpus)
        assert _score_rows(table.output) == [_as_printed(system) for system in document["systems"]]
        assert all(system["utterances"] == 6 and system["excluded_trained_on"] == 2 for system in document["systems"])
        printed = CliRunner().invoke(cli, [str(arg) for arg in command] + ["--corpus", str(corpus), "--json"])
        assert printed.exit_code == 0, printed.output
        assert json.loads(printed.stdout) == document  # stdout holds the JSON alone, the same numbers
    assert document["systems"][-1]["system"] == "ensemble" and len(document["systems"]) == 3
    refused = run("ensemble", runs["a"], runs["b"], "--corpus", corpus, "--split", "Test3", "--json")
    assert refused.exit_code == 2 and "--split Test3 has no A/V/D labels" in refused.output


def test_batched_evaluation_equals_one_at_a_time(corpus, runs):
    utterances = open_corpus(corpus).split("Development")
    batched = open_predictor(runs["a"], InferenceOptions(max_batch_s=1000.0)).predict(utterances)
    single = open_predictor(runs["a"], InferenceOptions(max_batch_s=1e-3)).predict(utterances)  # one per batch
    assert batched.predictions.ids == single.predictions.ids == [u.id for u in utterances]
    np.testing.assert_allclose(batched.predictions.values, single.predictions.values, atol=1e-5)


def test_evaluate_refuses_unlabelled_splits_and_existing_outputs(corpus, runs, tmp_path):
    result = run("evaluate", runs["a"], "--corpus", corpus, "--split", "Test3")
    assert result.exit_code == 2 and "use `sertool predict`" in result.output
    out = tmp_path / "x.csv"
    out.write_text("keep me")
    result = run("evaluate", runs["a"], "--corpus", corpus, "--out", out)
    assert result.exit_code == 2 and "--force" in result.output and out.read_text() == "keep me"


def test_submission_has_every_test3_file_once_clipped_and_sorted(corpus, runs, tmp_path):
    submission = tmp_path / "submission.csv"
    result = run("predict", runs["a"], "--corpus", corpus, "--split", "Test3", "--submission", submission)
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(submission.open()))
    assert rows[0] == ["FileName", "EmoAct", "EmoVal", "EmoDom"]
    assert [row[0] for row in rows[1:]] == [f"MSP-PODCAST_test3_{i:04d}.wav" for i in (1, 2, 3)]
    assert all(1.0 <= float(value) <= 7.0 for row in rows[1:] for value in row[1:])


def test_predict_windows_long_files_and_reads_any_rate(runs, tmp_path):
    audio = tmp_path / "in"
    write_tone(audio / "long.wav", duration_s=7.0, sample_rate=44_100, channels=2)
    write_tone(audio / "short" / "clip.wav", duration_s=1.0, sample_rate=8_000)
    out = tmp_path / "p.json"
    result = run("predict", runs["a"], audio, "--window-s", "3", "--hop-s", "1.5", "--out", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    by_id = {item["id"]: item for item in data["predictions"]}
    assert set(by_id) == {"long.wav", "short/clip.wav"}
    segments = by_id["long.wav"]["segments"]
    assert segments[0]["start_s"] == 0 and segments[-1]["end_s"] == pytest.approx(7.0)
    assert all(s["end_s"] - s["start_s"] == pytest.approx(3.0) for s in segments)
    assert "segments" not in by_id["short/clip.wav"]
    # One window alone equals predicting that stretch of audio as its own file.
    data_16k, _ = sf.read(str(audio / "long.wav"))
    assert data_16k.ndim == 2


def test_predict_too_short_and_missing_inputs_get_clear_errors(runs, tmp_path):
    write_tone(tmp_path / "blip.wav", duration_s=0.01)
    result = run("predict", runs["a"], tmp_path / "blip.wav")
    assert result.exit_code == 2 and "blip.wav" in result.output and "shorter than" in result.output
    result = run("predict", runs["a"], tmp_path / "nothing.wav")
    assert result.exit_code == 2 and "no such file" in result.output


def test_ensemble_from_csvs_equals_ensemble_from_checkpoints(corpus, runs, tmp_path):
    csvs = []
    for name in ("a", "b"):
        csvs.append(tmp_path / f"{name}.csv")
        assert run("evaluate", runs[name], "--corpus", corpus, "--out", csvs[-1]).exit_code == 0
    from_checkpoints, from_csvs = tmp_path / "ens_ckpt.csv", tmp_path / "ens_csv.csv"
    result = run("ensemble", runs["a"], runs["b"], "--corpus", corpus, "--out", from_checkpoints)
    assert result.exit_code == 0, result.output
    table_rows = [line for line in result.output.splitlines() if line.startswith("│") and "0." in line]
    assert len(table_rows) == 3 and "ensemble" in table_rows[-1]  # both members, then the ensemble
    assert run("ensemble", *csvs, "--corpus", corpus, "--out", from_csvs).exit_code == 0
    a, b = read_predictions(from_checkpoints), read_predictions(from_csvs)
    assert a.ids == b.ids
    np.testing.assert_allclose(a.values, b.values, atol=1e-5)
    np.testing.assert_allclose(a.spread, b.spread, atol=1e-5)
    members = [read_predictions(path).take(a.ids).values for path in csvs]
    np.testing.assert_allclose(a.values, np.mean(members, axis=0), atol=2e-6)


def test_saved_ensemble_is_accepted_by_evaluate_and_predict(corpus, runs, tmp_path):
    plan = tmp_path / "ens.json"
    result = run("ensemble", runs["a"], runs["b"], "--corpus", corpus, "--per-attribute", "best", "--save", plan)
    assert result.exit_code == 0, result.output
    saved = json.loads(plan.read_text())
    assert saved["kind"] == "select" and set(saved["attributes"]) == {"arousal", "valence", "dominance"}
    evaluated = run("evaluate", plan, "--corpus", corpus, "--split", "Development")
    assert evaluated.exit_code == 0, evaluated.output
    predicted = run("predict", plan, "--corpus", corpus, "--split", "Test3", "--format", "csv")
    assert predicted.exit_code == 0 and predicted.stdout.startswith("FileName,EmoAct,EmoVal,EmoDom")


def test_a_submission_refuses_dropped_rows_of_its_split_only(corpus, runs, tmp_path):
    import shutil

    broken = tmp_path / "corpus"
    shutil.copytree(corpus, broken)
    (broken / "Audios" / "MSP-PODCAST_test3_0002.wav").write_bytes(b"not audio")
    result = run("predict", runs["a"], "--corpus", broken, "--split", "Test3", "--submission", tmp_path / "s.csv")
    assert result.exit_code == 2 and "MSP-PODCAST_test3_0002.wav" in result.output
    assert not (tmp_path / "s.csv").exists()
    # A dropped Test1 row does not concern a Development submission.
    (broken / "Audios" / "MSP-PODCAST_0005_2000.wav").write_bytes(b"")  # a Test1 clip
    result = run("predict", runs["a"], "--corpus", broken, "--split", "Development", "--submission", tmp_path / "d.csv")
    assert result.exit_code == 0, result.output
