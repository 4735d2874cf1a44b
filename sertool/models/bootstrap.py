"""Bootstrap confidence intervals of the CCC, paired between systems scored on the same utterances.

A split's CCC is one number from one sample of utterances; another sample of the same size would give
another number. The bootstrap estimates that spread: draw the split's utterances with replacement
``num_resamples`` times, score each resample, and take the middle 95 % of the scores (percentile interval).

Systems scored on the same utterances are resampled *together* (the same resamples for every system), so the
difference of two systems' CCCs gets an interval of its own: it is often far narrower than either CCC's,
because both systems find the same utterances hard. A difference whose interval excludes 0 is one the
test set supports; one whose interval contains 0 is not (the test set cannot tell the two apart).

What it does not measure: training noise. Two runs of one config with different seeds differ by more than
this interval suggests (`sertool reproduce --seeds N` measures that). Utterances of one speaker are not
independent, so the interval is, if anything, too narrow.

The computation is vectorised: every resample is a row of counts (how often each utterance was drawn),
and the sums a CCC needs (Σp, Σy, Σp², Σy², Σpy per attribute and system) are one matrix product of the
counts with the data, so B = 1000 resamples of 10 k utterances take a fraction of a second.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sertool.core.errors import SertoolError
from sertool.data.records import ATTRIBUTES

CONFIDENCE = 0.95
SCORES: tuple[str, ...] = (*ATTRIBUTES, "average")
# Count rows per matrix product: a [chunk, N] float64 block stays around 32 MB for N = 10 k.
_CHUNK_ELEMENTS = 4_000_000
# A resample whose predictions vary less than this share of the whole sample's variance is constant
# (rounding leaves ~1e-17 where it is exactly constant); its CCC is 0, as ``ccc`` defines it.
_CONSTANT_SHARE = 1e-10


@dataclass(frozen=True)
class Interval:
    """A confidence interval: ``low`` ≤ ``high``."""

    low: float
    high: float

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class BootstrapResult:
    """The CCC of every system on every resample.

    Attributes:
        replicates: ``[B, S, 4]``: resample, system, and A, V, D, average (``SCORES`` order); NaN for an attribute
            a system does not predict (its average is that of its own attributes).
        confidence: the intervals' coverage, e.g. 0.95.
        seed: the seed the resamples were drawn with.
    """

    replicates: np.ndarray
    confidence: float
    seed: int

    @property
    def num_resamples(self) -> int:
        return int(self.replicates.shape[0])

    def interval(self, system: int = 0) -> dict[str, Interval]:
        """Percentile interval of each CCC of ``system`` (an index into the predictions given): of each of its
        attributes, and of their average."""
        return _intervals(self.replicates[:, system], self.confidence)

    def difference(self, system: int, reference: int) -> dict[str, Interval]:
        """Percentile interval of ``CCC(system) − CCC(reference)``, paired: the same resamples for both; for the
        attributes both predict, and for the average where both predict the same attributes (an average of
        other attributes is another score)."""
        difference = self.replicates[:, system] - self.replicates[:, reference]
        if not np.array_equal(np.isnan(self.replicates[0, system]), np.isnan(self.replicates[0, reference])):
            difference[:, -1] = np.nan
        return _intervals(difference, self.confidence)


def resample_indices(num_items: int, resamples: Sequence[int] | range, *, seed: int) -> np.ndarray:
    """The utterances each resample draws: ``[len(resamples), num_items]`` indices in ``[0, num_items)``.

    Resample b comes from its own random stream ``(seed, b)``, so it is the same however the resamples
    are split into chunks, and a reference implementation can draw exactly the same ones.
    """
    return np.stack([np.random.default_rng([seed, int(b)]).integers(0, num_items, size=num_items)
                     for b in resamples]) if len(resamples) else np.empty((0, num_items), dtype=np.int64)


def bootstrap_ccc(predictions: Sequence[np.ndarray], labels: np.ndarray, *, num_resamples: int, seed: int = 0,
                  confidence: float = CONFIDENCE, attributes: Sequence[Sequence[str]] | None = None) -> BootstrapResult:
    """Resample utterances ``num_resamples`` times and score every system on every resample.

    Args:
        predictions: one ``[N, len(attributes[s])]`` array per system (``[N, 3]``: A, V, D), rows aligned with
            ``labels``.
        labels: ``[N, 3]`` (A, V, D) on the same scale.
        attributes: per system, the attributes its columns are, in ``ATTRIBUTES`` order (None: all three for
            every system); a system is scored on its own, and its average is theirs.
        num_resamples: B, e.g. 1000.
        seed: the resamples' seed: the same seed, the same intervals.
        confidence: the intervals' coverage.

    Returns:
        The ``BootstrapResult``; its intervals are percentile intervals.

    Raises:
        ValueError: shapes disagree, N < 2, B < 1, or a confidence outside (0, 1).
        SertoolError: a prediction or label is NaN or infinite (naming which).
    """
    labels = np.asarray(labels, dtype=np.float64)
    systems = [np.asarray(p, dtype=np.float64) for p in predictions]
    predicted = [list(range(len(ATTRIBUTES)))] * len(systems) if attributes is None else \
        [[ATTRIBUTES.index(name) for name in names] for names in attributes]  # each system's columns of A, V, D
    if labels.ndim != 2 or labels.shape[1] != len(ATTRIBUTES) or labels.shape[0] < 2:
        raise ValueError(f"labels must be [N, {len(ATTRIBUTES)}] with N ≥ 2, got {labels.shape}")
    if not systems or len(predicted) != len(systems) or any(
            p.shape != (labels.shape[0], len(own)) or not own for p, own in zip(systems, predicted, strict=True)):
        raise ValueError(f"every prediction array must have the shape [N, its attributes] for the labels' shape "
                         f"{labels.shape}")
    for values, what in ((labels, "labels"), *((p, f"predictions of system {s}") for s, p in enumerate(systems))):
        if not np.isfinite(values).all():
            raise SertoolError(f"bootstrap: {int((~np.isfinite(values)).sum())} {what} are not finite numbers; "
                               "their CCC intervals would mean nothing: check what produced them")
    # Every system as [N, 3]: an attribute it does not predict takes the labels' column, scored and then dropped.
    systems = [_widened(p, own, labels) for p, own in zip(systems, predicted, strict=True)]
    if num_resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need num_resamples ≥ 1 and 0 < confidence < 1, got {num_resamples} and {confidence}")
    # Every array times one power of two (exact; CCC does not change when predictions and labels are scaled
    # alike) so that the largest magnitude lies in [0.5, 1): squares of 1e200 would overflow, of 1e-170 be 0.
    _, exponent = np.frexp(max(np.abs(values).max() for values in (labels, *systems)))
    labels, systems = np.ldexp(labels, -exponent), [np.ldexp(p, -exponent) for p in systems]
    num_items = labels.shape[0]
    # Centre every column on its whole-sample mean: the sums of squares then lose no precision to a large
    # mean (labels and predictions sit around 4 on the 1..7 scale). The offsets come back in the mean term.
    label_offset = labels.mean(axis=0)
    offsets = [p.mean(axis=0) for p in systems]
    y = labels - label_offset
    columns = [y, y * y]
    for p, offset in zip(systems, offsets, strict=True):
        centred = p - offset
        columns += [centred, centred * centred, centred * y]
    features = np.concatenate(columns, axis=1)  # [N, 6 + 9·S]
    total_variance = [np.var(p, axis=0) for p in systems]
    chunk = max(1, _CHUNK_ELEMENTS // num_items)
    replicates = np.empty((num_resamples, len(systems), len(SCORES)))
    for start in range(0, num_resamples, chunk):
        rows = range(start, min(start + chunk, num_resamples))
        indices = resample_indices(num_items, rows, seed=seed)
        counts = _counts(indices, num_items)
        sums = counts @ features / num_items  # [c, 6 + 9·S]: the resamples' means of every feature
        mean_y, mean_yy = sums[:, 0:3], sums[:, 3:6]
        variance_y = mean_yy - mean_y ** 2
        for s in range(len(systems)):
            base = 6 + 9 * s
            mean_p, mean_pp, mean_py = sums[:, base:base + 3], sums[:, base + 3:base + 6], sums[:, base + 6:base + 9]
            variance_p = mean_pp - mean_p ** 2
            covariance = mean_py - mean_p * mean_y
            shift = (mean_p + offsets[s]) - (mean_y + label_offset)
            denominator = variance_p + variance_y + shift ** 2
            constant = variance_p <= _CONSTANT_SHARE * total_variance[s]
            values = np.where(constant | (denominator <= 0), 0.0,
                              2 * covariance / np.where(denominator > 0, denominator, 1.0))
            own = values[:, predicted[s]]
            values[:, [k for k in range(len(ATTRIBUTES)) if k not in predicted[s]]] = np.nan
            replicates[start:start + len(rows), s, :3] = values
            replicates[start:start + len(rows), s, 3] = own.mean(axis=1)
    return BootstrapResult(replicates, confidence, seed)


def _widened(values: np.ndarray, columns: Sequence[int], labels: np.ndarray) -> np.ndarray:
    """A system's ``[N, k]`` predictions of the attributes ``columns`` as ``[N, 3]``, the labels' columns elsewhere."""
    wide = labels.copy()
    wide[:, list(columns)] = values
    return wide


def _counts(indices: np.ndarray, num_items: int) -> np.ndarray:
    """``[c, N]`` float64: how often each utterance was drawn in each resample."""
    rows = indices.shape[0]
    flat = (indices + num_items * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * num_items).reshape(rows, num_items).astype(np.float64)


def _intervals(replicates: np.ndarray, confidence: float) -> dict[str, Interval]:
    """``[B, 4]`` replicates → percentile interval per score (NaN columns, a score the system lacks, left out)."""
    tail = (1 - confidence) / 2
    return {name: Interval(*(float(bound) for bound in np.quantile(replicates[:, k], [tail, 1 - tail])))
            for k, name in enumerate(SCORES) if not np.isnan(replicates[:, k]).any()}
