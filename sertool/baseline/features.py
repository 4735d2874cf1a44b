"""Utterance-level acoustic statistics: the fixed-length vector the ridge baseline regresses on.

The statistics and their groups are defined once, in ``sertool.models.utterance_stats`` (the ``--utterance-
stats`` path of trained systems reads the same vector); here they are computed for whole utterances read
from disk, in float64, without any normalisation: the ridge standardises each feature on the training
split instead.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from sertool.data.dataset import load_utterance_audio
from sertool.data.records import Utterance
from sertool.models.backbones.fbank import N_FFT, mel_filter_bank, raw_log_mel
from sertool.models.utterance_stats import (  # noqa: F401  (re-exported: the baseline's feature definitions)
    ENERGY_STATISTICS, FEATURE_GROUPS, NUM_FEATURES, feature_names, log_mel_statistics)


class StatisticsExtractor:
    """Computes one waveform's statistics with the filters and window built once."""

    def __init__(self) -> None:
        self.mel_filters = mel_filter_bank()
        self.window = torch.hann_window(N_FFT)

    def __call__(self, waveform: torch.Tensor) -> np.ndarray:
        """The statistics vector (``NUM_FEATURES`` float64 values) of one 16 kHz mono waveform."""
        with torch.no_grad():
            log_mel, lengths = raw_log_mel(waveform[None].float(), torch.ones(1, len(waveform), dtype=torch.bool),
                                           self.mel_filters, self.window)
            return log_mel_statistics(log_mel.double(), lengths)[0].numpy()


def utterance_statistics(utterances: Sequence[Utterance], *,
                         progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """``[N, NUM_FEATURES]`` statistics of whole utterances (read at 16 kHz, mono).

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
    return np.array(rows, dtype=np.float64).reshape(len(rows), NUM_FEATURES)


def fit_utterance_statistics(model: torch.nn.Module, utterances: Sequence[Utterance], *,
                             progress: Callable[[int, int], None] | None = None) -> None:
    """Fit the wide path's standardiser (``--utterance-stats``) on whole training clips; no-op without it.

    The moments are those the ridge floor standardises its features by: the statistics of each clip of
    ``utterances`` read whole, whatever crop training then uses.

    Args:
        model: a ``SERModel``.
        utterances: the training split (never a validation or test clip).
        progress: as for ``utterance_statistics``.
    """
    wide = getattr(model, "utterance_stats", None)
    if wide is not None:
        wide.standardizer.fit(torch.from_numpy(utterance_statistics(utterances, progress=progress)))
