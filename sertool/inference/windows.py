"""Long audio: cut a file into overlapping windows, predict each, combine them into one value per file.

The models were trained on utterances of about 2.75-11 s; a podcast episode is hours long. Windows of a
training-like length keep the model in the regime it knows, and the per-window values double as a
time-resolved output (``Segment`` rows).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sertool.core.config import DEFAULT_HOP_S, DEFAULT_WINDOW_S, MIN_DURATION_S, Config
from sertool.core.errors import SertoolError
from sertool.inference.predictions import Segment


def model_input_s(config: Config) -> float | None:
    """The clip length in seconds a model was made for: its training crop (``data.max_duration_s``; the
    authors' released models record the 15 s their training clips were limited to), else the window of a
    windowed Whisper encoder; None where neither says (a model trained on whole clips)."""
    if config.data.max_duration_s > 0:
        return config.data.max_duration_s
    return config.model.whisper_window_s or None


def shortest_input_s(lengths_s: Sequence[float | None]) -> float | None:
    """An ensemble's input length: the shortest of its members' (so no member sees more than it was made
    for); members that do not say (None, e.g. a predictions CSV) do not count; None if none says."""
    known = [length for length in lengths_s if length is not None]
    return min(known) if known else None


def default_windows(input_s: float | None, *, window_s: float | None, hop_s: float | None) -> tuple[float, float]:
    """``predict``'s window and hop: those given, else the model's input length (``DEFAULT_WINDOW_S`` when it
    does not say) and ``DEFAULT_HOP_S`` (at most the window, so no audio is skipped).

    Args:
        input_s: what ``model_input_s`` (or ``shortest_input_s``) says of the model.
        window_s: the window asked for (``--window-s``), or None.
        hop_s: the hop asked for (``--hop-s``), or None.

    Returns:
        ``(window_s, hop_s)``.
    """
    window_s = window_s if window_s is not None else (input_s or DEFAULT_WINDOW_S)
    return window_s, hop_s if hop_s is not None else min(DEFAULT_HOP_S, window_s)


def window_spans(num_samples: int, sample_rate: int, window_s: float, hop_s: float, *,
                 source: str = "audio") -> list[tuple[int, int]]:
    """Windows of ``window_s`` every ``hop_s`` that cover ``[0, num_samples)`` exactly.

    Every window is exactly ``window_s`` long, so the model always sees the length it was asked to see:
    the last window is aligned to the end of the file (it overlaps its neighbour more than ``hop_s``
    says) instead of being padded (silence the model never saw in training) or shortened (a fragment).
    A file no longer than one window is one window, the whole file.

    Args:
        num_samples: length of the file in samples.
        sample_rate: samples per second.
        window_s: window length in seconds.
        hop_s: seconds between window starts; ``0 < hop_s <= window_s`` so that no sample is skipped.
        source: how the error names the input, e.g. its path.

    Returns:
        ``(start_sample, end_sample)`` pairs, end exclusive, starts strictly increasing: the first starts
        at 0, the last ends at ``num_samples``, and every sample lies in at least one window.

    Raises:
        SertoolError: the window or hop is not positive, the hop exceeds the window, or the input is
            shorter than ``MIN_DURATION_S``.
    """
    window_samples = round(window_s * sample_rate)
    hop_samples = round(hop_s * sample_rate)
    if window_samples < 1 or hop_samples < 1 or hop_samples > window_samples:
        raise SertoolError(
            f"window {window_s:g} s, hop {hop_s:g} s: both must be positive and the hop at most the window "
            "(a longer hop would skip audio)"
        )
    min_samples = round(MIN_DURATION_S * sample_rate)
    if num_samples < min_samples:
        raise SertoolError(
            f"{source}: {num_samples / sample_rate:.3f} s of audio is shorter than the {MIN_DURATION_S:g} s "
            "a prediction needs; leave the file out, or join it with the audio around it"
        )
    if num_samples <= window_samples:
        return [(0, num_samples)]
    spans = [(start, start + window_samples) for start in range(0, num_samples - window_samples, hop_samples)]
    spans.append((num_samples - window_samples, num_samples))
    return spans


def combine_windows(spans: Sequence[tuple[int, int]], values: np.ndarray) -> np.ndarray:
    """One value per file from per-window values: the duration-weighted mean.

    Each second of the file counts once: a sample's value is the mean of the windows that contain it,
    and the file's value is the mean over its samples. Equivalently, each window is weighted by the
    duration it covers, a stretch shared by k windows split k ways. A plain mean of the windows would
    instead count the overlap of the end-aligned last window twice and give a short window (or a short
    segment from a voice-activity detector) as much say as a long one. With equal windows and no
    overlap, it is the plain mean.

    Args:
        spans: ``(start_sample, end_sample)`` per window, as ``window_spans`` returns (any order;
            uncovered gaps simply do not count).
        values: ``[W, K]`` one row per window, e.g. A, V, D.

    Returns:
        ``[K]`` the file's values.

    Raises:
        ValueError: no windows, a window that is not a span, or ``values`` of the wrong shape.
    """
    bounds = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    values = np.asarray(values, dtype=np.float64)
    if len(bounds) == 0 or values.ndim != 2 or len(values) != len(bounds):
        raise ValueError(f"combine_windows: {len(bounds)} spans and values of shape {values.shape}")
    starts, ends = bounds[:, 0], bounds[:, 1]
    if np.any(ends <= starts) or np.any(starts < 0):
        raise ValueError("combine_windows: every span needs 0 <= start < end")
    # The window edges cut the time line into pieces, each covered by a fixed set of windows: per piece,
    # coverage counts the windows (a difference array over the edges), and each of them gets
    # length / coverage of it. Prefix sums give a window's total over its pieces. O(W log W), no
    # per-sample arrays, so an hour of audio costs nothing.
    edges = np.unique(bounds)
    first_piece = np.searchsorted(edges, starts)
    end_piece = np.searchsorted(edges, ends)
    opened = np.bincount(first_piece, minlength=len(edges)) - np.bincount(end_piece, minlength=len(edges))
    coverage = np.cumsum(opened)[:-1]
    share = np.where(coverage > 0, np.diff(edges) / np.maximum(coverage, 1), 0.0)
    covered_before = np.concatenate([[0.0], np.cumsum(share)])
    weights = covered_before[end_piece] - covered_before[first_piece]
    return weights @ values / weights.sum()


def window_segments(file_id: str, spans: Sequence[tuple[int, int]], values: np.ndarray, *,
                    sample_rate: int) -> list[Segment]:
    """Per-window ``Segment`` rows of one file, for time-resolved output.

    Args:
        file_id: the file's id in the ``Predictions``.
        spans: ``(start_sample, end_sample)`` per window.
        values: ``[W, K]`` per window, a column per attribute predicted (A, V, D).
        sample_rate: samples per second of the spans.

    Raises:
        ValueError: spans and values differ in number.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) != len(spans):
        raise ValueError(f"window_segments: {len(spans)} spans and {len(values)} value rows")
    return [
        Segment(file_id, start / sample_rate, end / sample_rate, tuple(float(v) for v in row))
        for (start, end), row in zip(spans, values, strict=True)
    ]
