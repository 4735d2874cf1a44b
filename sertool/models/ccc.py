"""The concordance correlation coefficient: one implementation for the training loss and the metric.

``CCC = 2·cov(p, y) / (var(p) + var(y) + (mean(p) − mean(y))²)`` with population (biased) statistics.

A constant prediction scores exactly 0. This also settles the one 0/0 case of the formula (prediction and
target are the same constant): it scores 0 too, because a constant carries no information about the target
whatever its value. Where the denominator is positive the formula already gives 0 for a constant
prediction; the explicit rule only removes the float rounding around it and the 0/0.

Reported scores are computed over a whole split (``ccc_scores``). As a training loss CCC is a statistic of
the batch: the CCC of a micro-batch is not the CCC of the split, nor the mean of per-batch values.

Any finite inputs, from subnormal to the largest floats, give a CCC in [−1, 1]: both are first multiplied by
one power of two (exact) so that the largest magnitude lies in [0.5, 1), since CCC does not change when
prediction and target are scaled alike; squares of 1e200 would overflow and squares of 1e−170 underflow
to 0. The moments are then taken around a shift (the rounded mean) with its rounding corrected, so that
values that differ only in their last digits keep their spread. Non-finite inputs: the loss (``ccc``)
returns NaN, which the training loop's non-finite guard skips; the reported scores (``ccc_scores``,
``collapsed_attributes``) refuse them with a ``SertoolError``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from sertool.core.errors import SertoolError
from sertool.data.records import ATTRIBUTES

# A prediction whose standard deviation is below this share of the labels' is called collapsed
# (near-constant): with spread ratio r, CCC ≤ 2r / (1 + r²) whatever the correlation, ≈ 0.2 at r = 0.1.
COLLAPSE_SPREAD_RATIO = 0.1


def ccc(pred: Tensor, target: Tensor, dim: int = 0) -> Tensor:
    """Concordance correlation coefficient along ``dim``, differentiable.

    Args:
        pred: predictions, e.g. ``[N, 3]`` for the three attributes.
        target: same shape as ``pred``.
        dim: the dimension that holds the samples.

    Returns:
        CCC with ``dim`` reduced, e.g. ``[3]``, one value per attribute, in [−1, 1] for any finite inputs
        (NaN where an input is not). Exactly 0 where the prediction is constant along ``dim``; its gradient
        there is the formula's (it still points towards agreement).

    Raises:
        ValueError: shapes differ.
    """
    if pred.shape != target.shape:
        raise ValueError(f"ccc: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    constant = pred.amax(dim) == pred.amin(dim)
    pred, target = _scaled_alike(pred, target.to(pred.dtype), dim)
    # Moments around a shift (the mean as rounded, no gradient: the moments do not depend on it), with the
    # rounding corrected by the deviations' own means: ``var = mean(d²) − mean(d)²`` for any shift.
    pred_shift, target_shift = pred.detach().mean(dim, keepdim=True), target.detach().mean(dim, keepdim=True)
    pred_deviation, target_deviation = pred - pred_shift, target - target_shift
    pred_offset, target_offset = pred_deviation.mean(dim), target_deviation.mean(dim)
    covariance = (pred_deviation * target_deviation).mean(dim) - pred_offset * target_offset
    # Rounding can leave a variance a hair below 0, never more.
    pred_variance = (pred_deviation.square().mean(dim) - pred_offset.square()).clamp(min=0)
    target_variance = (target_deviation.square().mean(dim) - target_offset.square()).clamp(min=0)
    mean_difference = (pred_shift - target_shift).squeeze(dim) + (pred_offset - target_offset)
    denominator = pred_variance + target_variance + mean_difference.square()
    # The denominator is 0 only when both are the same constant; 1 in its place keeps values and
    # gradients finite, and the constant rule below sets the value.
    safe_denominator = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    # |2·cov| ≤ var(p) + var(y) holds exactly; the clamp removes the rounding past ±1 at perfect (dis)agreement.
    value = (2 * covariance / safe_denominator).clamp(-1, 1)
    # `value - value.detach()` is exactly 0 yet keeps the formula's gradient (a straight-through zero).
    return torch.where(constant, value - value.detach(), value)


def _scaled_alike(pred: Tensor, target: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """``pred`` and ``target`` times one power of two per column (along ``dim``), chosen so that the larger
    of their largest magnitudes lies in [0.5, 1): exact, and neither overflows nor underflows in a square.

    The factor carries no gradient; CCC and spread ratios do not depend on it.
    """
    largest = torch.maximum(pred.detach().abs().amax(dim, keepdim=True), target.detach().abs().amax(dim, keepdim=True))
    _, exponent = torch.frexp(largest)  # largest = mantissa · 2**exponent, mantissa in [0.5, 1); 0 for 0
    # 2**−exponent as two factors: one alone is no float for the smallest subnormals (2**1074).
    half = torch.div(-exponent, 2, rounding_mode="floor")
    factor_a, factor_b = torch.exp2(half.to(pred.dtype)), torch.exp2((-exponent - half).to(pred.dtype))
    return pred * factor_a * factor_b, target * factor_a * factor_b


def ccc_loss(pred: Tensor, target: Tensor, dim: int = 0) -> Tensor:
    """``1 − CCC`` per attribute (``dim`` reduced): 0 for perfect agreement, 2 for perfect disagreement."""
    return 1 - ccc(pred, target, dim)


def ccc_scores(predictions: np.ndarray | Tensor, targets: np.ndarray | Tensor, *,
               attributes: Sequence[str] = ATTRIBUTES) -> dict[str, float]:
    """CCC of each attribute over a whole split, and their average.

    Args:
        predictions: ``[N, len(attributes)]``, a column per attribute (``[N, 3]``: A, V, D). Any scale, as long
            as predictions and targets share it: CCC is unchanged when both go through the same affine map
            (unit ↔ 1..7), not when only one does.
        targets: the same shape, order and scale.
        attributes: the columns' attributes: all three, or those of a system of fewer (``train.attributes``).

    Returns:
        ``{"arousal": ..., "valence": ..., "dominance": ..., "average": ...}`` (one entry per attribute, and the
        mean of them as "average"), each in [−1, 1].

    Raises:
        ValueError: the arrays are not both ``[N, len(attributes)]`` with the same N, or N is 0.
        SertoolError: a prediction or target is NaN or infinite (naming the first).
    """
    pred, target = _checked(predictions, targets, caller="ccc_scores", attributes=attributes)
    values = ccc(pred, target, dim=0).tolist()
    scores = dict(zip(attributes, values, strict=True))
    scores["average"] = float(np.mean(values))
    return scores


def _checked(predictions: np.ndarray | Tensor, targets: np.ndarray | Tensor, *, caller: str,
             attributes: Sequence[str]) -> tuple[Tensor, Tensor]:
    """CPU float64 copies of ``[N, len(attributes)]`` predictions and targets, all finite (a split's statistics
    are summed over up to ~100k values).

    Raises:
        ValueError: the arrays are not both ``[N, len(attributes)]`` with the same N, or N is 0.
        SertoolError: a value is NaN or infinite: a score of it would be NaN, or a number that means nothing.
    """
    pred, target = _as_float64(predictions), _as_float64(targets)
    if pred.ndim != 2 or pred.shape != target.shape or pred.shape[1] != len(attributes) or pred.shape[0] == 0:
        raise ValueError(
            f"{caller}: expected predictions and targets of shape [N, {len(attributes)}] (N > 0), got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    for values, what in ((pred, "predictions"), (target, "labels")):
        bad = ~torch.isfinite(values)
        if bad.any():
            row, column = (int(index) for index in bad.nonzero()[0])
            raise SertoolError(
                f"{caller}: {int(bad.sum())} of the {what} are not finite numbers (first: row {row}, "
                f"{attributes[column]} = {values[row, column].item()}); a CCC of them would mean nothing: check "
                f"what produced the {what}"
            )
    return pred, target


def _as_float64(values: np.ndarray | Tensor) -> Tensor:
    """A CPU float64 copy."""
    if isinstance(values, Tensor):
        return values.detach().to("cpu", torch.float64)
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


def collapsed_attributes(predictions: np.ndarray | Tensor, targets: np.ndarray | Tensor, *,
                         attributes: Sequence[str] = ATTRIBUTES) -> list[str]:
    """The attributes whose predictions are (near-)constant over a split.

    An attribute is collapsed when its predictions' standard deviation is at most
    ``COLLAPSE_SPREAD_RATIO`` times the labels' (or exactly 0): its CCC is then at most about 0.2 however
    well the predictions are ordered, and a head that learned nothing scores the same. Such a CCC says
    the head stopped predicting, not how well it predicts.

    Args:
        predictions, targets: ``[N, len(attributes)]``, on one scale.
        attributes: the columns' attributes (as ``ccc_scores``).

    Returns:
        The collapsed attribute names, in column order (empty when none).

    Raises:
        ValueError: the arrays are not both ``[N, len(attributes)]`` with the same N, or N is 0.
        SertoolError: a prediction or target is NaN or infinite (naming the first).
    """
    # Scaled alike: the ratio of the spreads is the same, and the squares of huge values stay finite.
    pred, target = _scaled_alike(*_checked(predictions, targets, caller="collapsed_attributes", attributes=attributes),
                                 dim=0)
    pred_spread, target_spread = pred.std(dim=0, unbiased=False), target.std(dim=0, unbiased=False)
    collapsed = (pred_spread == 0) | (pred_spread <= COLLAPSE_SPREAD_RATIO * target_spread)
    return [name for name, flag in zip(attributes, collapsed.tolist(), strict=True) if flag]
