"""CCC: against an independent numpy reference, on known cases, and as a whole-split metric."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sertool.core.errors import SertoolError
from sertool.data.records import ATTRIBUTES
from sertool.models.bootstrap import bootstrap_ccc
from sertool.models.ccc import ccc, ccc_loss, ccc_scores, collapsed_attributes
from tests.cases import case


def reference_ccc(pred: np.ndarray, target: np.ndarray) -> float:
    """Lin's CCC with population moments, written out independently of sertool."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    pred_mean, target_mean = pred.mean(), target.mean()
    covariance = np.mean((pred - pred_mean) * (target - target_mean))
    return 2 * covariance / (pred.var() + target.var() + (pred_mean - target_mean) ** 2)


def test_matches_reference_per_column() -> None:
    rng = np.random.default_rng(0)
    target = rng.uniform(1, 7, size=(200, 3))
    pred = 0.6 * target + rng.normal(0, 0.8, size=target.shape) + 0.3
    got = ccc(torch.tensor(pred), torch.tensor(target), dim=0)
    expected = [reference_ccc(pred[:, i], target[:, i]) for i in range(3)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    # The sample dimension can be any one.
    np.testing.assert_allclose(ccc(torch.tensor(pred.T), torch.tensor(target.T), dim=1).numpy(), expected, rtol=1e-12)


def test_known_values() -> None:
    target = torch.tensor([-1.5, -0.5, 0.5, 1.5], dtype=torch.float64)  # mean 0, population variance 1.25
    assert ccc(target, target).item() == pytest.approx(1.0, abs=1e-15)
    assert ccc(-target, target).item() == pytest.approx(-1.0, abs=1e-15)
    # Shifted by c: 2·var / (2·var + c²) = 2.5 / 3.5.
    assert ccc(target + 1, target).item() == pytest.approx(5 / 7, abs=1e-15)
    # Scaled by k: 2k·var / (k²·var + var) = 2k / (1 + k²) = 0.8 for k = 2.
    assert ccc(2 * target, target).item() == pytest.approx(0.8, abs=1e-15)


def test_constant_prediction_is_exactly_zero_with_a_finite_gradient() -> None:
    target = torch.tensor([0.1, 0.4, 0.35, 0.9])
    pred = torch.full((4,), 0.3, requires_grad=True)
    value = ccc(pred, target)
    assert value.item() == 0.0
    value.backward()
    # The formula's gradient at a constant prediction: d(2·cov/denominator)/dp_i = 2(y_i − ȳ) / (n·denominator).
    denominator = target.var(unbiased=False) + (0.3 - target.mean()) ** 2
    torch.testing.assert_close(pred.grad, 2 * (target - target.mean()) / (4 * denominator))


@pytest.mark.parametrize("value", [0.3, 0.1, 1 / 3])
def test_same_constant_as_the_target_is_zero_not_nan(value: float) -> None:
    constant = torch.full((5,), value, requires_grad=True)
    result = ccc(constant, torch.full((5,), value))
    assert result.item() == 0.0
    result.backward()
    assert torch.isfinite(constant.grad).all()


def test_gradient_matches_finite_differences() -> None:
    generator = torch.Generator().manual_seed(1)
    pred = torch.rand(6, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    target = torch.rand(6, 3, dtype=torch.float64, generator=generator)
    assert torch.autograd.gradcheck(lambda p: ccc(p, target), (pred,))


def test_loss_is_one_minus_ccc() -> None:
    pred, target = torch.rand(10, 3), torch.rand(10, 3)
    torch.testing.assert_close(ccc_loss(pred, target), 1 - ccc(pred, target))


def test_scores_by_attribute_name_over_the_whole_split() -> None:
    rng = np.random.default_rng(2)
    target = rng.uniform(1, 7, size=(64, 3))
    pred = target + rng.normal(0, 1, size=target.shape)
    scores = ccc_scores(pred, target)
    assert list(scores) == [*ATTRIBUTES, "average"]
    for i, name in enumerate(ATTRIBUTES):
        assert scores[name] == pytest.approx(reference_ccc(pred[:, i], target[:, i]), abs=1e-12)
    assert scores["average"] == pytest.approx(np.mean([scores[name] for name in ATTRIBUTES]), abs=1e-15)
    # Tensors (float32, even ones that require grad) give the same numbers.
    as_tensor = ccc_scores(torch.tensor(pred, dtype=torch.float32, requires_grad=True), torch.tensor(target))
    assert as_tensor["average"] == pytest.approx(scores["average"], abs=1e-6)


def test_split_ccc_differs_from_the_mean_of_batch_cccs() -> None:
    # Each batch of two is predicted backwards (batch CCC −1), but the split's large between-batch
    # variation is right: over the whole split cov = 6, var = 6.5 for both, equal means, CCC = 12/13.
    # Averaging per-batch values (as the official baseline does) would report −1.
    target = torch.tensor([1.0, 2.0, 6.0, 7.0], dtype=torch.float64)
    pred = torch.tensor([2.0, 1.0, 7.0, 6.0], dtype=torch.float64)
    per_batch = [ccc(pred[:2], target[:2]).item(), ccc(pred[2:], target[2:]).item()]
    assert per_batch == pytest.approx([-1.0, -1.0], abs=1e-15)
    split = ccc_scores(pred.unsqueeze(1).repeat(1, 3), target.unsqueeze(1).repeat(1, 3))
    assert split["arousal"] == pytest.approx(12 / 13, abs=1e-15)
    assert split["arousal"] == pytest.approx(reference_ccc(pred.numpy(), target.numpy()), abs=1e-15)


@pytest.mark.parametrize("shapes", [((4, 3), (4, 2)), ((4, 2), (4, 2)), ((0, 3), (0, 3)), ((12,), (12,))])
def test_scores_reject_arrays_that_are_not_n_by_3(shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    with pytest.raises(ValueError, match="shape"):
        ccc_scores(np.zeros(shapes[0]), np.zeros(shapes[1]))


def exact_ccc(pred: np.ndarray, target: np.ndarray) -> float:
    """Lin's CCC of the float64 values as given, in exact rational arithmetic (``fractions``): no rounding,
    overflow or underflow anywhere; a constant prediction scores 0 (sertool's rule)."""
    p, y = [Fraction(float(v)) for v in pred], [Fraction(float(v)) for v in target]
    if len(set(p)) == 1:
        return 0.0
    n = len(p)
    p_mean, y_mean = sum(p) / n, sum(y) / n
    covariance = sum((a - p_mean) * (b - y_mean) for a, b in zip(p, y, strict=True)) / n
    p_variance = sum((a - p_mean) ** 2 for a in p) / n
    y_variance = sum((b - y_mean) ** 2 for b in y) / n
    return float(2 * covariance / (p_variance + y_variance + (p_mean - y_mean) ** 2))


# Any finite float64, from subnormals to ±1.8e308.
_ANY_FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)
# Ratings-like values times one power of ten from 1e-300 to 1e300: the spread is far above the last digit.
_SCALED = st.tuples(st.integers(-300, 300), st.lists(st.floats(-10, 10), min_size=6, max_size=6)).map(
    lambda drawn: [value * 10.0 ** drawn[0] for value in drawn[1]])


def _columns(elements: st.SearchStrategy[float]) -> st.SearchStrategy[np.ndarray]:
    return st.integers(2, 24).flatmap(lambda n: arrays(np.float64, (n, len(ATTRIBUTES)), elements=elements))


@case("values", "predictions and labels of any finite float64 magnitude (1e-300 to 1e300, subnormals, ±max)",
      "every CCC finite, in [-1, 1] and equal to an exact rational-arithmetic reference")
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_finite_arrays_give_the_exact_ccc(data: st.DataObject) -> None:
    pred = data.draw(_columns(_ANY_FINITE))
    target = data.draw(arrays(np.float64, pred.shape, elements=_ANY_FINITE))
    scores = ccc_scores(pred, target)
    for column, name in enumerate(ATTRIBUTES):
        assert -1.0 <= scores[name] <= 1.0
        assert scores[name] == pytest.approx(exact_ccc(pred[:, column], target[:, column]), abs=1e-9)
    assert math.isfinite(scores["average"])


@case("values", "predictions and labels scaled alike by 1e-300 … 1e300", "the same CCC as on the 1..7 scale")
@settings(max_examples=200, deadline=None)
@given(base=st.lists(st.tuples(st.floats(1, 7), st.floats(1, 7)), min_size=2, max_size=20),
       exponent=st.integers(-300, 300))
def test_ccc_does_not_change_when_both_are_scaled_alike(base: list[tuple[float, float]], exponent: int) -> None:
    pred, target = (np.array(column).repeat(3).reshape(-1, 3) for column in zip(*base, strict=True))
    scale = 10.0 ** exponent
    expected = exact_ccc(pred[:, 0], target[:, 0])
    assert ccc_scores(pred * scale, target * scale)["arousal"] == pytest.approx(expected, abs=1e-9)
    # Both ways of calling agree on the large and tiny scales too (the loss shares the function).
    assert ccc(torch.tensor(pred[:, 0] * scale), torch.tensor(target[:, 0] * scale)).item() == \
        pytest.approx(expected, abs=1e-9)


@case("values", "a NaN or infinity among the predictions or labels given to a score",
      "SertoolError naming predictions or labels, the row and the attribute; never a NaN score")
@settings(max_examples=100, deadline=None)
@given(data=st.data(), bad=st.sampled_from([math.nan, math.inf, -math.inf]), in_labels=st.booleans())
def test_any_non_finite_input_is_refused_by_every_score(data: st.DataObject, bad: float, in_labels: bool) -> None:
    pred = data.draw(_columns(st.floats(1, 7)))
    target = data.draw(arrays(np.float64, pred.shape, elements=st.floats(1, 7)))
    row, column = data.draw(st.integers(0, len(pred) - 1)), data.draw(st.integers(0, 2))
    (target if in_labels else pred)[row, column] = bad
    what = "labels" if in_labels else "predictions"
    for score in (ccc_scores, collapsed_attributes):
        with pytest.raises(SertoolError, match=f"of the {what} are not finite numbers"):
            score(pred, target)
    with pytest.raises(SertoolError, match=f"{what}( of system 0)? are not finite"):
        bootstrap_ccc([pred], target, num_resamples=3)


@case("values", "predictions of 1e200 (a diverged linear head) in the bootstrap and the collapse check",
      "intervals and spreads from the scaled values, never NaN")
def test_bootstrap_and_collapse_survive_huge_and_tiny_values() -> None:
    rng = np.random.default_rng(3)
    labels = rng.uniform(1, 7, size=(40, 3))
    pred = labels + rng.normal(0, [0.5, 1.0, 0.05], size=labels.shape)
    pred[:, 2] = 4.0 + 0.01 * (labels[:, 2] - 4.0)  # dominance collapsed
    reference = bootstrap_ccc([pred], labels, num_resamples=50)
    for scale in (1e300, 1e200, 1e-200, 1e-300):  # products still normal floats: the same numbers, scaled
        result = bootstrap_ccc([pred * scale], labels * scale, num_resamples=50)
        np.testing.assert_allclose(result.replicates, reference.replicates, rtol=0, atol=1e-9)
        assert collapsed_attributes(pred * scale, labels * scale) == ["dominance"]
