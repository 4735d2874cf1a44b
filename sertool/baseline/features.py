"""Utterance-level acoustic statistics: the fixed-length vector the ridge baseline regresses on.

Every statistic comes from the same log-mel front end as the fbank encoder (80 HTK mel bands, 25 ms
windows, 10 ms hop; ``sertool.models.backbones.fbank.raw_log_mel``), without any normalisation: the
ridge standardises each feature on the training split instead.

Groups (``FEATURE_GROUPS``), in this order in the vector:

- ``mel_mean``, ``mel_std``: mean and standard deviation of each band's log power over the frames (the
  spectral envelope and its variability: vocal effort, tilt, formants);
- ``delta_std``: standard deviation of each band's frame-to-frame change (how fast the spectrum moves:
  speaking rate, articulation);
- ``energy``: the frame log-energy's mean, standard deviation, 10th / 50th / 90th percentiles, and the
  share of frames within 30 dB of the loudest (a pause ratio).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from sertool.data.dataset import load_utterance_audio
from sertool.data.records import Utterance
from sertool.models.backbones.fbank import N_FFT, NUM_MEL_BINS, mel_filter_bank, raw_log_mel

FEATURE_GROUPS: tuple[str, ...] = ("mel_mean", "mel_std", "delta_std", "energy")
ENERGY_STATISTICS: tuple[str, ...] = ("mean", "std", "p10", "p50", "p90", "active_share")
ACTIVE_RANGE_DB = 30.0  # a frame within this many dB of the utterance's loudest counts as speech
_LOG_POWER_PER_DB = np.log(10.0) / 10.0  # natural-log power units per decibel


def feature_names() -> list[str]:
    """The name of each entry of the vector ``utterance_statistics`` returns, e.g. ``mel_mean_0``."""
    names = [f"{group}_{band}" for group in ("mel_mean", "mel_std", "delta_std") for band in range(NUM_MEL_BINS)]
    return names + [f"energy_{name}" for name in ENERGY_STATISTICS]


class StatisticsExtractor:
    """Computes ``utterance_statistics`` with the filters and window built once."""

    def __init__(self) -> None:
        self.mel_filters = mel_filter_bank()
        self.window = torch.hann_window(N_FFT)

    def __call__(self, waveform: torch.Tensor) -> np.ndarray:
        """The statistics vector (``len(feature_names())`` float64 values) of one 16 kHz mono waveform."""
        with torch.no_grad():
            log_mel, lengths = raw_log_mel(waveform[None].float(), torch.ones(1, len(waveform), dtype=torch.bool),
                                           self.mel_filters, self.window)
        frames = log_mel[0, : int(lengths[0])].double().numpy()  # [F, 80] natural-log power
        deltas = np.diff(frames, axis=0) if len(frames) > 1 else np.zeros_like(frames)
        energy = np.log(np.exp(frames).sum(axis=1))  # frame log power summed over the bands
        active = energy >= energy.max() - ACTIVE_RANGE_DB * _LOG_POWER_PER_DB
        energy_stats = [energy.mean(), energy.std(), *np.percentile(energy, [10, 50, 90]), active.mean()]
        return np.concatenate([frames.mean(axis=0), frames.std(axis=0), deltas.std(axis=0), energy_stats])


def utterance_statistics(utterances: Sequence[Utterance], *,
                         progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """``[N, len(feature_names())]`` statistics of whole utterances (read at 16 kHz, mono).

    Args:
        utterances: the utterances, read whole (a window, ``span_s``, exactly its span).
        progress: called as ``progress(done, total)`` after each utterance.

    Raises:
        SertoolError: an audio file cannot be read (naming it).
    """
    extract = StatisticsExtractor()
    rows = []
    for done, utt in enumerate(utterances, start=1):
        waveform = load_utterance_audio(utt)
        rows.append(extract(waveform))
        if progress is not None:
            progress(done, len(utterances))
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(feature_names()))
