"""Collapse detection: a head whose predictions are (near-)constant is named by train (per validation,
in summary.json and the reporter), by evaluate, and by the baseline's summary."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from sertool.models.ccc import COLLAPSE_SPREAD_RATIO, ccc_scores, collapsed_attributes
from sertool.training.reporter import Reporter
from tests.corpus_files import write_learnable_corpus
from tests.systems import small_config


def _labels(seed=0, n=200):
    return np.random.default_rng(seed).uniform(1, 7, size=(n, 3))


def test_near_constant_columns_are_collapsed_and_informative_ones_are_not():
    labels = _labels()
    rng = np.random.default_rng(1)
    spread = labels.std(axis=0)
    predictions = np.stack([
        4.0 + 0 * labels[:, 0],                                               # constant
        4.0 + 0.5 * COLLAPSE_SPREAD_RATIO * (labels[:, 1] - labels[:, 1].mean()),  # perfectly ordered, tiny
        labels[:, 2] + rng.normal(0, spread[2], size=len(labels)),           # noisy but alive
    ], axis=1)
    assert collapsed_attributes(predictions, labels) == ["arousal", "valence"]
    assert collapsed_attributes(labels, labels) == []


@pytest.mark.parametrize("seed", range(5))
def test_a_collapsed_head_cannot_score_above_the_documented_bound(seed):
    """Spread ratio r caps CCC at 2r / (1 + r²): ≈ 0.198 at the threshold, even for a perfect ordering."""
    labels = _labels(seed)
    r = COLLAPSE_SPREAD_RATIO * 0.999  # just inside the threshold
    predictions = labels.mean(axis=0) + r * (labels - labels.mean(axis=0))  # best case: exact order, right mean
    assert collapsed_attributes(predictions, labels) == ["arousal", "valence", "dominance"]
    assert max(ccc_scores(predictions, labels)[name] for name in ("arousal", "valence", "dominance")) \
        == pytest.approx(2 * r / (1 + r * r))


class _Recorder(Reporter):
    def __init__(self):
        self.validations = []
        self.result = None

    def validation(self, metrics):
        self.validations.append(metrics)

    def finish(self, result):
        self.result = result


def test_training_names_a_collapsed_head_in_each_validation_and_in_summary(tmp_path, monkeypatch):
    import sertool.training.loop as loop

    real_run_model = loop.run_model

    def valence_stuck(*args, **kwargs):  # a head that outputs one value whatever the input
        output = real_run_model(*args, **kwargs)
        output.emotion_unit[:, 1] = 0.5
        return output

    monkeypatch.setattr(loop, "run_model", valence_stuck)
    corpus = write_learnable_corpus(tmp_path / "corpus")
    reporter = _Recorder()
    loop.train(small_config(corpus, epochs=2), tmp_path / "run", reporter=reporter)
    assert [record["collapsed"] for record in reporter.validations] == [["valence"], ["valence"]]
    assert reporter.result.collapsed == ["valence"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["collapsed"] == ["valence"]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [record["collapsed"] for record in logged if record["type"] == "valid"] == [["valence"], ["valence"]]


def test_training_without_a_collapse_says_none(tmp_path):
    from sertool.training.loop import train

    corpus = write_learnable_corpus(tmp_path / "corpus")
    result = train(small_config(corpus, epochs=1), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["collapsed"] == result.collapsed
    assert all("collapsed" in record for record in result.history)


def test_evaluate_warns_about_a_constant_column(tmp_path):
    corpus = write_learnable_corpus(tmp_path / "corpus")
    from sertool.data.corpus import open_corpus

    development = open_corpus(corpus).split("Development")
    predictions = tmp_path / "constant-valence.csv"
    with open(predictions, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["FileName", "EmoAct", "EmoVal", "EmoDom"])
        for utt in development:
            writer.writerow([utt.id, utt.arousal, 4.0, utt.dominance])
    run = subprocess.run([sys.executable, "-m", "sertool", "evaluate", str(predictions), "--corpus", str(corpus),
                          "--split", "Development"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    warning = " ".join(run.stderr.split())
    assert "valence predictions are near-constant" in warning
    assert "arousal" not in warning.split("valence predictions")[0].split("warning:")[-1]
