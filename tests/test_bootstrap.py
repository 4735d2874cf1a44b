"""Bootstrap CIs of the CCC against a plain loop over the same resamples, and against known coverage."""
from __future__ import annotations

import numpy as np
import pytest

from sertool.core.errors import SertoolError
from sertool.models import bootstrap as module
from sertool.models.bootstrap import SCORES, bootstrap_ccc, resample_indices
from sertool.models.ccc import ccc_scores


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.uniform(1, 7, size=(n, 3))
    good = labels + rng.normal(0, 1.0, size=(n, 3))
    poor = 0.5 * labels + 2 + rng.normal(0, 1.5, size=(n, 3))
    return labels, good, poor


def _loop(predictions, labels, indices) -> np.ndarray:
    """The reference: every resample scored on its own with sertool's split-level CCC."""
    return np.array([[[ccc_scores(p[rows], labels[rows])[name] for name in SCORES] for p in predictions]
                     for rows in indices])


def test_vectorised_replicates_and_intervals_equal_a_plain_loop():
    labels, good, poor = _data(300)
    result = bootstrap_ccc([good, poor], labels, num_resamples=200, seed=7)
    reference = _loop([good, poor], labels, resample_indices(300, range(200), seed=7))
    np.testing.assert_allclose(result.replicates, reference, rtol=0, atol=1e-10)
    for system in (0, 1):
        for k, name in enumerate(SCORES):
            low, high = np.percentile(reference[:, system, k], [2.5, 97.5])
            assert (result.interval(system)[name].low, result.interval(system)[name].high) == pytest.approx((low, high))
    for k, name in enumerate(SCORES):
        low, high = np.percentile(reference[:, 0, k] - reference[:, 1, k], [2.5, 97.5])
        assert (result.difference(0, 1)[name].low, result.difference(0, 1)[name].high) == pytest.approx((low, high))


def test_resamples_do_not_depend_on_chunking(monkeypatch):
    labels, good, poor = _data(120, seed=1)
    whole = bootstrap_ccc([good, poor], labels, num_resamples=50, seed=3)
    monkeypatch.setattr(module, "_CHUNK_ELEMENTS", 7 * 120)  # 7 resamples per matrix product
    chunked = bootstrap_ccc([good, poor], labels, num_resamples=50, seed=3)
    np.testing.assert_allclose(chunked.replicates, whole.replicates, rtol=0, atol=1e-12)  # BLAS rounding only
    assert not np.array_equal(bootstrap_ccc([good], labels, num_resamples=50, seed=4).replicates,
                              whole.replicates[:, :1])  # another seed, other resamples


def test_95_percent_intervals_cover_the_population_ccc_about_95_percent_of_the_time():
    # A population whose CCC is known: y ~ N(4, 1), p = y + N(0, 1): CCC = 2·1 / (2 + 1) = 2/3 per attribute.
    rng = np.random.default_rng(11)
    covered = []
    for trial in range(100):
        labels = rng.normal(4, 1, size=(150, 3))
        predictions = labels + rng.normal(0, 1, size=(150, 3))
        interval = bootstrap_ccc([predictions], labels, num_resamples=200, seed=trial).interval()["arousal"]
        covered.append(2 / 3 in interval)
    assert 0.86 <= np.mean(covered) <= 0.99  # 100 trials: the binomial spread around 0.95 is ±0.02


def test_paired_difference_is_narrower_than_either_interval_and_zero_for_a_system_with_itself():
    labels, good, _ = _data(400, seed=2)
    slightly_worse = good + np.random.default_rng(5).normal(0, 0.3, size=good.shape)
    result = bootstrap_ccc([good, slightly_worse, good], labels, num_resamples=300)
    width = lambda i: i.high - i.low  # noqa: E731
    for name in SCORES:
        assert width(result.difference(0, 1)[name]) < min(width(result.interval(0)[name]),
                                                          width(result.interval(1)[name]))
        assert (result.difference(0, 2)[name].low, result.difference(0, 2)[name].high) == (0.0, 0.0)


def test_a_constant_prediction_scores_zero_in_every_resample_and_bad_input_is_refused():
    labels, good, _ = _data(50)
    constant = np.full_like(good, 4.0)
    assert np.all(bootstrap_ccc([constant], labels, num_resamples=20).replicates == 0.0)
    with pytest.raises(ValueError, match="shape"):
        bootstrap_ccc([good[:10]], labels, num_resamples=5)
    with pytest.raises(SertoolError, match="predictions of system 0 are not finite"):
        bootstrap_ccc([np.where(good > 6, np.nan, good)], labels, num_resamples=5)
    with pytest.raises(ValueError, match="num_resamples"):
        bootstrap_ccc([good], labels, num_resamples=0)
