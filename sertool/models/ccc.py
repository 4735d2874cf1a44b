"""The concordance correlation coefficient: one implementation for the training loss and the metric.

``CCC = 2·cov(p, y) / (var(p) + var(y) + (mean(p) − mean(y))²)`` with population (biased) statistics.

A constant prediction scores exactly 0. This also settles the one 0/0 case of the formula (prediction and
target are the same constant): it scores 0 too, because a constant carries no information about the target
whatever its value. Where the denominator is positive the formula already gives 0 for a constant
prediction; the explicit rule only removes the float rounding around it and the 0/0.

Reported scores are computed over a whole split (``ccc_scores``). As a training loss CCC is a statistic of
the batch: the CCC of a micro-batch is not the CCC of the split, nor the mean of per-batch values.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

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
        CCC with ``dim`` reduced, e.g. ``[3]``, one value per attribute. Exactly 0 where the prediction is
        constant along ``dim``; its gradient there is the formula's (it still points towards agreement).

    Raises:
        ValueError: shapes differ.
    """
    if pred.shape != target.shape:
        raise ValueError(f"ccc: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    target = target.to(pred.dtype)
    pred_mean = pred.mean(dim, keepdim=True)
    target_mean = target.mean(dim, keepdim=True)
    pred_centred = pred - pred_mean
    target_centred = target - target_mean
    covariance = (pred_centred * target_centred).mean(dim)
    denominator = (
        pred_centred.square().mean(dim)
        + target_centred.square().mean(dim)
        + (pred_mean - target_mean).squeeze(dim).square()
    )
    # The denominator is 0 only when both are the same constant; 1 in its place keeps values and
    # gradients finite, and the constant rule below sets the value.
    safe_denominator = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    value = 2 * covariance / safe_denominator
    constant = pred.amax(dim) == pred.amin(dim)
    # `value - value.detach()` is exactly 0 yet keeps the formula's gradient (a straight-through zero).
    return torch.where(constant, value - value.detach(), value)


def ccc_loss(pred: Tensor, target: Tensor, dim: int = 0) -> Tensor:
    """``1 − CCC`` per attribute (``dim`` reduced): 0 for perfect agreement, 2 for perfect disagreement."""
    return 1 - ccc(pred, target, dim)


def ccc_scores(predictions: np.ndarray | Tensor, targets: np.ndarray | Tensor) -> dict[str, float]:
    """CCC of each attribute over a whole split, and their average.

    Args:
        predictions: ``[N, 3]`` in ``ATTRIBUTES`` order (A, V, D). Any scale, as long as predictions and
            targets share it: CCC is unchanged when both go through the same affine map (unit ↔ 1..7),
            not when only one does.
        targets: ``[N, 3]``, same order and scale.

    Returns:
        ``{"arousal": ..., "valence": ..., "dominance": ..., "average": ...}``.

    Raises:
        ValueError: the arrays are not both ``[N, 3]`` with the same N, or N is 0.
    """
    pred, target = _as_float64(predictions), _as_float64(targets)
    if pred.ndim != 2 or pred.shape != target.shape or pred.shape[1] != len(ATTRIBUTES) or pred.shape[0] == 0:
        raise ValueError(
            f"ccc_scores: expected predictions and targets of shape [N, {len(ATTRIBUTES)}] (N > 0), got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    values = ccc(pred, target, dim=0).tolist()
    scores = dict(zip(ATTRIBUTES, values, strict=True))
    scores["average"] = float(np.mean(values))
    return scores


def _as_float64(values: np.ndarray | Tensor) -> Tensor:
    """A CPU float64 copy: a split's statistics are summed over up to ~100k values."""
    if isinstance(values, Tensor):
        return values.detach().to("cpu", torch.float64)
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


def collapsed_attributes(predictions: np.ndarray | Tensor, targets: np.ndarray | Tensor) -> list[str]:
    """The attributes whose predictions are (near-)constant over a split.

    An attribute is collapsed when its predictions' standard deviation is at most
    ``COLLAPSE_SPREAD_RATIO`` times the labels' (or exactly 0): its CCC is then at most about 0.2 however
    well the predictions are ordered, and a head that learned nothing scores the same. Such a CCC says
    the head stopped predicting, not how well it predicts.

    Args:
        predictions, targets: ``[N, 3]`` in ``ATTRIBUTES`` order, on one scale.

    Returns:
        The collapsed attribute names, in ``ATTRIBUTES`` order (empty when none).
    """
    pred, target = _as_float64(predictions), _as_float64(targets)
    pred_spread, target_spread = pred.std(dim=0, unbiased=False), target.std(dim=0, unbiased=False)
    collapsed = (pred_spread == 0) | (pred_spread <= COLLAPSE_SPREAD_RATIO * target_spread)
    return [name for name, flag in zip(ATTRIBUTES, collapsed.tolist(), strict=True) if flag]
