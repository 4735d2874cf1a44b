"""Batches bounded by padded seconds (items × longest item), the unit every batch bound in sertool uses.

``fill_batches`` is the one greedy rule; ``length_sorted_batches`` applies it to every item longest first
(inference and validation), and the training sampler applies it within its duration buckets.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fill_batches(members: np.ndarray, durations_s: np.ndarray, max_batch_s: float,
                 min_batch_items: int = 1) -> list[list[int]]:
    """Cut ``members`` (indices into ``durations_s``, in the order given) into consecutive batches.

    Greedy: a batch closes when it holds ``min_batch_items`` and the next item would push size × longest
    past ``max_batch_s``. A single item longer than the bound is a batch of its own.

    Returns:
        Lists of indices, every member once, in the order given.
    """
    batches: list[list[int]] = []
    batch: list[int] = []
    longest_s = 0.0
    fewest = max(1, min_batch_items)
    # Plain floats and comparisons, not numpy scalars and max(): `train` plans every epoch of the run at its
    # start (the LR schedule's length), 1.7 million items for 20 epochs of MSP-Podcast's Train.
    lengths_s = np.asarray(durations_s, dtype=np.float64)[members].tolist()
    for index, duration_s in zip(members.tolist(), lengths_s, strict=True):
        longest_s_with = duration_s if duration_s > longest_s else longest_s
        if len(batch) >= fewest and (len(batch) + 1) * longest_s_with > max_batch_s:
            batches.append(batch)
            batch, longest_s_with = [], duration_s
        batch.append(index)
        longest_s = longest_s_with
    if batch:
        batches.append(batch)
    return batches


def length_sorted_batches(durations_s: Sequence[float] | np.ndarray, *, max_batch_s: float) -> list[list[int]]:
    """Deterministic inference batches: every item once, longest first, padded seconds ≤ ``max_batch_s``.

    Sorting by length leaves almost no padding, and longest-first puts the peak memory at the start, so an
    out-of-memory error comes at once rather than at the end of a long evaluation.
    """
    durations = np.asarray(durations_s, dtype=np.float64)
    return fill_batches(np.argsort(-durations, kind="stable"), durations, max_batch_s)
