"""`sertool baseline`: the ridge against an independent least-squares solve, the alpha choice, the
statistics' invariants, and the command end to end (its CSVs go through evaluate and ensemble)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from sertool.models.backbones.fbank import NUM_MEL_BINS
from sertool.models.ridge import ALPHAS, CONSTANT_SCALE, fit_ridge, ridge_path
from sertool.models.utterance_stats import FEATURE_GROUPS, StatisticsExtractor, feature_names
from tests.corpus_files import write_learnable_corpus


def _lstsq_ridge(features, targets, alpha):
    """min ‖y − b − X̃w‖² + α‖w‖² with an unpenalised intercept b, as one least-squares problem on the
    augmented system [[1, X̃], [0, √α·I]] · [b; w] ≈ [y; 0] (X̃: features standardised with numpy; a feature
    constant over the rows keeps scale 1, so it becomes 0)."""
    mean, std = features.mean(axis=0), features.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    standardized = (features - mean) / std
    n, p = standardized.shape
    design = np.block([[np.ones((n, 1)), standardized], [np.zeros((p, 1)), np.sqrt(alpha) * np.eye(p)]])
    rhs = np.vstack([targets, np.zeros((p, targets.shape[1]))])
    solution = np.linalg.lstsq(design, rhs, rcond=None)[0]
    return lambda x: solution[0] + ((x - mean) / std) @ solution[1:]


def _ccc(pred, true):
    """The textbook formula, written out independently of sertool.models.ccc."""
    cov = np.mean((pred - pred.mean()) * (true - true.mean()))
    return 2 * cov / (pred.var() + true.var() + (pred.mean() - true.mean()) ** 2)


def _problem(seed, n=40, p=60):
    """More features than rows (as a few hundred clips × 248 statistics), features on very different scales."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n + 30, p)) * rng.uniform(0.01, 100, size=p) + rng.normal(size=p) * 50
    weights = rng.normal(size=(p, 3)) * (rng.uniform(size=(p, 1)) < 0.2)
    targets = 4 + (features - features.mean(0)) / features.std(0) @ weights * 0.3 + rng.normal(size=(n + 30, 3))
    return features[:n], targets[:n], features[n:], targets[n:]


@pytest.mark.parametrize("alpha", [0.01, 3.0, 1000.0])
@pytest.mark.parametrize("features", [60, 20], ids=["more features than rows (the kernel)", "fewer (the Gram)"])
def test_ridge_equals_the_least_squares_solution_of_the_augmented_system(alpha, features):
    train_x, train_y, test_x, _ = _problem(0, p=features)
    standardizer, weights, intercept = ridge_path(train_x, train_y, (alpha,))
    ours = intercept + standardizer(test_x) @ weights[0]
    np.testing.assert_allclose(ours, _lstsq_ridge(train_x, train_y, alpha)(test_x), rtol=1e-7, atol=1e-8)


def test_alpha_is_chosen_per_attribute_by_validation_ccc():
    train_x, train_y, valid_x, valid_y = _problem(1)
    model, curve = fit_ridge(train_x, train_y, valid_x, valid_y)
    expected_curve = np.array([[_ccc(_lstsq_ridge(train_x, train_y, alpha)(valid_x)[:, k], valid_y[:, k])
                                for k in range(3)] for alpha in ALPHAS])
    np.testing.assert_allclose(curve, expected_curve, atol=1e-8)
    chosen = [ALPHAS[int(np.argmax(expected_curve[:, k]))] for k in range(3)]
    assert list(model.alphas) == chosen
    assert len(set(chosen)) > 1, "the problem should make the attributes choose different alphas"
    for k, alpha in enumerate(chosen):
        np.testing.assert_allclose(model.predict(valid_x)[:, k], _lstsq_ridge(train_x, train_y, alpha)(valid_x)[:, k],
                                   atol=1e-7)


def test_a_constant_feature_is_ignored_rather_than_dividing_by_zero():
    train_x, train_y, valid_x, valid_y = _problem(2)
    train_x[:, 0] = 5.0
    valid_x[:, 0] = 7.0  # differs from training: must not change predictions
    model, _ = fit_ridge(train_x, train_y, valid_x, valid_y)
    shifted = valid_x.copy()
    shifted[:, 0] = -100.0
    np.testing.assert_allclose(model.predict(valid_x), model.predict(shifted))
    assert np.isfinite(model.predict(valid_x)).all()


def test_a_feature_that_varies_by_rounding_alone_counts_as_constant():
    """openSMILE's ComParE gives features that are 0 on every training clip but one, where they are 3e-16: as
    a spread, that put a held-out clip's 8.8 at 2e17 standard deviations. Below CONSTANT_SCALE it is constant."""
    train_x, train_y, valid_x, valid_y = _problem(3)
    train_x[:, 0] = 0.0
    train_x[7, 0] = 2.87e-16
    assert 0 < train_x[:, 0].std() < CONSTANT_SCALE
    model, _ = fit_ridge(train_x, train_y, valid_x, valid_y)
    shifted = valid_x.copy()
    shifted[:, 0] = 8.8
    np.testing.assert_allclose(model.predict(shifted), model.predict(valid_x), atol=1e-9)
    train_x[7, 0] = 1e-6  # a real (if small) spread is standardised as any other
    assert fit_ridge(train_x, train_y, valid_x, valid_y)[0].standardizer.scale[0] == pytest.approx(
        train_x[:, 0].std())


def test_statistics_follow_gain_as_the_log_power_says():
    """A gain g adds 2·ln g to every band's log power: means shift by it, spreads and shares stay."""
    rng = np.random.default_rng(0)
    t = torch.arange(16_000) / 16_000
    waveform = (0.2 * torch.sin(2 * torch.pi * 180 * t) * (1 + torch.sin(2 * torch.pi * 3 * t))
                + 0.01 * torch.from_numpy(rng.normal(size=16_000)).float())
    extract = StatisticsExtractor()
    quiet, loud = extract(waveform), extract(waveform * 4)
    names = feature_names()
    assert quiet.shape == (len(names),) == (3 * NUM_MEL_BINS + 6,)
    shift = 2 * np.log(4.0)
    group = {name: np.array([n.startswith(name) for n in names]) for name in ("mel_mean", "mel_std", "delta_std")}
    np.testing.assert_allclose(loud[group["mel_mean"]] - quiet[group["mel_mean"]], shift, atol=1e-3)
    np.testing.assert_allclose(loud[group["mel_std"]], quiet[group["mel_std"]], atol=1e-3)
    np.testing.assert_allclose(loud[group["delta_std"]], quiet[group["delta_std"]], atol=1e-3)
    energy = {name: (quiet[names.index(f"energy_{name}")], loud[names.index(f"energy_{name}")])
              for name in ("mean", "std", "p50", "active_share")}
    assert energy["mean"][1] - energy["mean"][0] == pytest.approx(shift, abs=1e-3)
    assert energy["std"][1] == pytest.approx(energy["std"][0], abs=1e-3)
    assert energy["active_share"][1] == pytest.approx(energy["active_share"][0])
    assert FEATURE_GROUPS == ("mel_mean", "mel_std", "delta_std", "energy")


def test_baseline_command_writes_predictions_that_evaluate_and_ensemble_accept(tmp_path):
    corpus = write_learnable_corpus(tmp_path / "corpus", per_split={"Train": 40, "Development": 16, "Test1": 16})
    out = tmp_path / "baseline"
    run = subprocess.run([sys.executable, "-m", "sertool", "baseline", "--corpus", str(corpus), "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert sorted(path.name for path in out.iterdir()) == ["Development.csv", "Test1.csv", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_utterances"] == 40 and summary["scores"]["Test1"]["utterances"] == 16
    assert summary["scores"]["Development"]["role"] == "chose alpha"
    # Loudness follows arousal in this corpus: the floor must find it on held-out speakers.
    assert summary["scores"]["Test1"]["ccc"]["arousal"] > 0.8
    assert "Test1 of" in run.stdout and "16" in run.stdout

    evaluated = subprocess.run([sys.executable, "-m", "sertool", "evaluate", str(out / "Test1.csv"), "--corpus",
                                str(corpus), "--split", "Test1"], capture_output=True, text=True)
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"{summary['scores']['Test1']['ccc']['arousal']:.4f}" in evaluated.stdout
    shutil.copy(out / "Test1.csv", tmp_path / "copy.csv")  # a second member (one member twice is refused)
    ensembled = subprocess.run([sys.executable, "-m", "sertool", "ensemble", str(out / "Test1.csv"),
                                str(tmp_path / "copy.csv"), "--corpus", str(corpus), "--split", "Test1"],
                               capture_output=True, text=True)
    assert ensembled.returncode == 0, ensembled.stderr

    again = subprocess.run([sys.executable, "-m", "sertool", "baseline", "--corpus", str(corpus), "--out", str(out)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr
