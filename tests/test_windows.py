"""Long-audio windows: exact coverage for every length, and the duration-weighted combination."""
from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest

from sertool.core.errors import SertoolError
from sertool.inference.windows import MIN_DURATION_S, combine_windows, window_segments, window_spans

SAMPLE_RATE = 100  # a small rate keeps the exhaustive length loop fast; the arithmetic is the same


def check_spans(spans: list[tuple[int, int]], num_samples: int, window: int, hop: int) -> None:
    starts = [start for start, _ in spans]
    assert spans[0][0] == 0 and spans[-1][1] == num_samples
    assert all(later > earlier for earlier, later in pairwise(starts))  # strictly increasing
    assert all(later - earlier <= hop for earlier, later in pairwise(starts))
    assert all(0 <= start < end <= num_samples for start, end in spans)
    # Every window has the full length (the last is end-aligned), unless the file is shorter than one.
    assert all(end - start == min(window, num_samples) for start, end in spans)
    covered = np.zeros(num_samples, dtype=bool)
    for start, end in spans:
        covered[start:end] = True
    assert covered.all()
    # No redundant window: the count a regular grid needs to reach the end, plus the end-aligned one.
    expected = 1 if num_samples <= window else math.ceil((num_samples - window) / hop) + 1
    assert len(spans) == expected


@pytest.mark.parametrize(("window_s", "hop_s"), [(1.0, 1.0), (1.0, 0.5), (1.0, 0.3), (0.7, 0.7), (2.0, 0.01)])
def test_windows_cover_every_length_exactly(window_s: float, hop_s: float) -> None:
    window, hop = round(window_s * SAMPLE_RATE), round(hop_s * SAMPLE_RATE)
    min_samples = round(MIN_DURATION_S * SAMPLE_RATE)
    for num_samples in range(min_samples, 1200):
        check_spans(window_spans(num_samples, SAMPLE_RATE, window_s, hop_s), num_samples, window, hop)


def test_edge_lengths() -> None:
    window_s, hop_s = 8.0, 4.0
    sample_rate = 16_000
    window = int(window_s * sample_rate)
    assert window_spans(window, sample_rate, window_s, hop_s) == [(0, window)]  # exactly one window
    # One sample over: a second window, aligned to the end, one sample later.
    assert window_spans(window + 1, sample_rate, window_s, hop_s) == [(0, window), (1, window + 1)]
    # A whole number of hops: the end-aligned window is the regular one, not a duplicate.
    assert window_spans(2 * window, sample_rate, window_s, hop_s) == [(0, window), (window // 2, 3 * window // 2),
                                                                       (window, 2 * window)]
    assert window_spans(2 * window, sample_rate, window_s, window_s) == [(0, window), (window, 2 * window)]
    # Shorter than a window but long enough: the whole file, not padded.
    assert window_spans(sample_rate, sample_rate, window_s, hop_s) == [(0, sample_rate)]


def test_too_short_input_names_the_file() -> None:
    num_samples = round(MIN_DURATION_S * SAMPLE_RATE) - 1
    with pytest.raises(SertoolError, match=r"clip.wav: 0\.240 s of audio is shorter than the 0\.25 s"):
        window_spans(num_samples, SAMPLE_RATE, 1.0, 0.5, source="clip.wav")
    with pytest.raises(SertoolError):
        window_spans(0, SAMPLE_RATE, 1.0, 0.5)


@pytest.mark.parametrize(("window_s", "hop_s"), [(1.0, 1.5), (1.0, 0.0), (0.0, 0.0), (1.0, -0.5)])
def test_bad_window_or_hop(window_s: float, hop_s: float) -> None:
    with pytest.raises(SertoolError, match="hop at most the window"):
        window_spans(1000, SAMPLE_RATE, window_s, hop_s)


def per_sample_reference(spans: list[tuple[int, int]], values: np.ndarray) -> np.ndarray:
    """The definition, sample by sample: mean of the windows over each covered sample, then over samples."""
    num_samples = max(end for _, end in spans)
    total = np.zeros((num_samples, values.shape[1]))
    count = np.zeros(num_samples)
    for (start, end), row in zip(spans, values, strict=True):
        total[start:end] += row
        count[start:end] += 1
    covered = count > 0
    return (total[covered] / count[covered, None]).mean(axis=0)


def test_combine_matches_the_per_sample_definition() -> None:
    rng = np.random.default_rng(0)
    for num_samples in (30, 100, 101, 257, 1000):
        spans = window_spans(num_samples, SAMPLE_RATE, 1.0, 0.3)
        values = rng.uniform(1, 7, size=(len(spans), 3))
        np.testing.assert_allclose(combine_windows(spans, values), per_sample_reference(spans, values), rtol=1e-12)
    # Arbitrary spans, unordered, with a gap and nested windows (e.g. segments from a detector).
    spans = [(50, 90), (0, 10), (5, 40), (60, 70)]
    values = rng.uniform(1, 7, size=(4, 3))
    np.testing.assert_allclose(combine_windows(spans, values), per_sample_reference(spans, values), rtol=1e-12)


def test_combine_weights_by_duration_not_by_count() -> None:
    # Two disjoint windows, 3 s and 1 s: the longer one gets three quarters of the say.
    spans = [(0, 300), (300, 400)]
    np.testing.assert_allclose(combine_windows(spans, np.array([[2.0], [6.0]])), [3.0])
    # The end-aligned window overlaps its neighbour: the shared stretch is split, not counted twice.
    spans = window_spans(150, SAMPLE_RATE, 1.0, 1.0)
    assert spans == [(0, 100), (50, 150)]
    np.testing.assert_allclose(combine_windows(spans, np.array([[2.0], [6.0]])), [4.0])


def test_combine_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        combine_windows([], np.zeros((0, 3)))
    with pytest.raises(ValueError):
        combine_windows([(0, 10)], np.zeros((2, 3)))
    with pytest.raises(ValueError):
        combine_windows([(10, 10)], np.zeros((1, 3)))


def test_window_segments_are_in_seconds() -> None:
    spans = window_spans(250, SAMPLE_RATE, 1.0, 1.0)
    values = np.arange(len(spans) * 3, dtype=float).reshape(-1, 3)
    segments = window_segments("long.wav", spans, values, sample_rate=SAMPLE_RATE)
    assert [(s.start_s, s.end_s) for s in segments] == [(0.0, 1.0), (1.0, 2.0), (1.5, 2.5)]
    assert segments[2].values == (6.0, 7.0, 8.0) and {s.id for s in segments} == {"long.wav"}


def test_every_window_reads_only_its_span(tmp_path) -> None:
    """The first window starts at 0 like a whole file, yet must read only its own samples."""
    import soundfile as sf

    from sertool.data.dataset import UtteranceDataset
    from sertool.data.records import Utterance
    from sertool.inference.inputs import windowed_pieces

    waveform = np.sin(np.arange(7 * 16_000) / 50.0).astype(np.float32)
    sf.write(tmp_path / "long.wav", waveform, 16_000, subtype="FLOAT")
    utterance = Utterance(id="long.wav", audio_path=tmp_path / "long.wav", split="predict", duration_s=7.0)
    pieces = list(windowed_pieces([utterance], window_s=3.0, hop_s=2.0))
    dataset = UtteranceDataset([piece.utterance for piece in pieces], to_unit=float)
    for index, piece in enumerate(pieces):
        start, end = piece.span
        np.testing.assert_array_equal(dataset[index]["waveform"].numpy(), waveform[start:end])
    assert len(UtteranceDataset([utterance], to_unit=float)[0]["waveform"]) == len(waveform)
