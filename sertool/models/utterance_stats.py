"""Utterance-level statistics of the raw log-mel spectrum: what the ridge floor reads, and the "wide" path.

One batched, masked computation (``log_mel_statistics``) serves two users:

- ``sertool baseline`` regresses on them, computed for whole utterances read from disk, in float64,
  without any normalisation (``utterance_statistics``; the ridge standardises each feature on the
  training split);
- ``--utterance-stats`` (``UtteranceStatistics``) concatenates them, standardised, to the pooled
  representation the heads read: a linear view of level and spectral balance beside the encoder.

The log-mel front end is the fbank encoder's (80 HTK mel bands, 25 ms windows, 10 ms hop;
``sertool.models.backbones.fbank.raw_log_mel``), without any normalisation. Groups
(``FEATURE_GROUPS``), in this order in the vector:

- ``mel_mean``, ``mel_std``: mean and standard deviation of each band's log power over the frames (the
  spectral envelope and its variability: vocal effort, tilt, formants);
- ``delta_std``: standard deviation of each band's frame-to-frame change (how fast the spectrum moves:
  speaking rate, articulation);
- ``energy``: the frame log-energy's mean, standard deviation, 10th / 50th / 90th percentiles, and the
  share of frames within 30 dB of the loudest (a pause ratio).

Why the encoder alone does not see these: it normalises every clip by one mean and variance of its log-mel
(``FbankBackbone.log_mel``), which makes it blind to the recording's level, by design, since a
recording's gain is set by its session as much as by its speaker's effort. Loudness is still among the
strongest cues of arousal and dominance within one corpus, and the ridge floor reads it. The wide path
gives it back to the heads as a separate input, standardised over the training clips, so that the
encoder stays gain-invariant and the heads learn from the training data how far the level can be trusted.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from sertool.data.dataset import load_utterance_audio
from sertool.data.records import Utterance
from sertool.models.backbones.base import lengths_to_mask
from sertool.models.backbones.fbank import N_FFT, NUM_MEL_BINS, mel_filter_bank, raw_log_mel

FEATURE_GROUPS: tuple[str, ...] = ("mel_mean", "mel_std", "delta_std", "energy")
ENERGY_STATISTICS: tuple[str, ...] = ("mean", "std", "p10", "p50", "p90", "active_share")
ACTIVE_RANGE_DB = 30.0  # a frame within this many dB of the utterance's loudest counts as speech
_LOG_POWER_PER_DB = math.log(10.0) / 10.0  # natural-log power units per decibel
_PERCENTILES = (0.1, 0.5, 0.9)


def feature_names() -> list[str]:
    """The name of each entry of a statistics vector, e.g. ``mel_mean_0``."""
    names = [f"{group}_{band}" for group in ("mel_mean", "mel_std", "delta_std") for band in range(NUM_MEL_BINS)]
    return names + [f"energy_{name}" for name in ENERGY_STATISTICS]


NUM_FEATURES = len(feature_names())


def log_mel_statistics(log_mel: Tensor, lengths: Tensor) -> Tensor:
    """The statistics of each utterance of a padded batch, over its real frames only.

    Args:
        log_mel: ``[B, F, 80]`` natural-log mel power (``raw_log_mel``), any values on padded frames.
        lengths: ``[B]`` real frames of each utterance (at least 1).

    Returns:
        ``[B, NUM_FEATURES]`` in ``feature_names()`` order, in ``log_mel``'s dtype. Population standard
        deviations; percentiles interpolate linearly (as numpy's default); an utterance of one frame has
        ``delta_std`` 0.
    """
    frames = log_mel.shape[1]
    mask = lengths_to_mask(lengths, frames)
    weight = mask.unsqueeze(-1).to(log_mel.dtype)
    count = lengths.to(log_mel.dtype).view(-1, 1)
    mean = (log_mel * weight).sum(dim=1) / count
    std = (((log_mel - mean[:, None]) ** 2 * weight).sum(dim=1) / count).sqrt()
    # Delta t (frame t+1 minus frame t) is real when frame t+1 is.
    deltas = log_mel[:, 1:] - log_mel[:, :-1]
    delta_weight = weight[:, 1:]
    delta_count = (count - 1).clamp(min=1)
    delta_mean = (deltas * delta_weight).sum(dim=1) / delta_count
    delta_std = (((deltas - delta_mean[:, None]) ** 2 * delta_weight).sum(dim=1) / delta_count).sqrt()
    energy = torch.logsumexp(log_mel, dim=-1)  # [B, F]: frame log power summed over the bands
    quantiles = torch.tensor(_PERCENTILES, dtype=log_mel.dtype, device=log_mel.device)
    energy_rows = []
    for row, length in zip(energy, lengths.tolist(), strict=True):
        real = row[:length]
        active = real >= real.max() - ACTIVE_RANGE_DB * _LOG_POWER_PER_DB
        energy_rows.append(torch.cat([real.mean()[None], real.std(correction=0)[None],
                                      torch.quantile(real, quantiles), active.to(real.dtype).mean()[None]]))
    return torch.cat([mean, std, delta_std, torch.stack(energy_rows)], dim=-1)


class Standardizer(nn.Module):
    """Standardises features by a mean and standard deviation fitted once, on the training split.

    ``fit`` sets them from the rows of every training clip (``sertool train`` calls it before the first
    step, on whole clips, as the ridge floor standardises its features); they never change while training,
    so an utterance's output depends neither on its batch nor on the step. They are buffers: every
    checkpoint (``last.pt``, ``best.pt``, exported and released folders) stores them, and a resumed run or
    a loaded model uses them as they were. A feature that did not vary over the training clips keeps
    scale 1. Using it before ``fit`` is an error: unstandardised log-mel statistics would be silently wrong.
    """

    # Buffers (register_buffer), declared so that their type is known.
    count: Tensor
    mean: Tensor
    scale: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))  # training clips fitted on
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(dim, dtype=torch.float64))

    @torch.no_grad()
    def fit(self, rows: Tensor) -> None:
        """Set the moments to those of ``rows`` ``[N, dim]`` (population standard deviation).

        Raises:
            ValueError: no rows, or a non-finite value among them.
        """
        rows = torch.as_tensor(rows, dtype=torch.float64, device=self.mean.device)
        if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] != self.mean.shape[0]:
            raise ValueError(f"fit needs rows of shape [N >= 1, {self.mean.shape[0]}], got {tuple(rows.shape)}")
        if not torch.isfinite(rows).all():
            raise ValueError("fit got non-finite statistics")
        scale = rows.std(dim=0, correction=0)
        self.count.fill_(rows.shape[0])
        self.mean.copy_(rows.mean(dim=0))
        self.scale.copy_(torch.where(scale > 0, scale, torch.ones_like(scale)))

    @property
    def fitted(self) -> bool:
        """Whether ``fit`` has set the moments (a loaded checkpoint's count says so too)."""
        return bool(self.count > 0)

    def forward(self, rows: Tensor) -> Tensor:
        """``rows`` ``[N, dim]`` standardised, in their own dtype.

        Raises:
            RuntimeError: ``fit`` was never called.
        """
        if not self.fitted:
            raise RuntimeError("the utterance statistics' standardiser was never fitted: call "
                               "fit_utterance_statistics(model, training clips) before training the model")
        return ((rows.to(torch.float64) - self.mean) / self.scale).to(rows.dtype)


class UtteranceStatistics(nn.Module):
    """The wide path: waveforms → standardised ``log_mel_statistics`` ``[B, NUM_FEATURES]``.

    No trainable parameters; the standardiser's moments are its state (``Standardizer``). In training
    mode each clip's whole vector is replaced by zeros (the training mean) with probability ``dropout``,
    so that the heads cannot lean on the statistics alone and the encoder keeps learning.

    Args:
        dropout: probability of dropping a training clip's statistics (0: never).
    """

    # Buffers (register_buffer), declared so that their type is known.
    mel_filters: Tensor
    window: Tensor

    def __init__(self, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("mel_filters", mel_filter_bank(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.standardizer = Standardizer(NUM_FEATURES)
        self.dropout = dropout
        self.output_dim = NUM_FEATURES

    def statistics(self, waveforms: Tensor, sample_mask: Tensor) -> Tensor:
        """Raw ``[B, NUM_FEATURES]`` statistics (float32) of right-padded waveforms, as ``fit`` takes them."""
        # Statistics of log power lose too much in half precision: float32 whatever the autocast.
        with torch.no_grad(), torch.autocast(waveforms.device.type, enabled=False):
            log_mel, lengths = raw_log_mel(waveforms.float(), sample_mask.to(torch.bool), self.mel_filters,
                                           self.window)
            return log_mel_statistics(log_mel, lengths)

    def forward(self, waveforms: Tensor, sample_mask: Tensor) -> Tensor:
        """Standardised statistics of right-padded ``[B, S]`` waveforms with ``[B, S]`` bool ``sample_mask``."""
        standardised = self.standardizer(self.statistics(waveforms, sample_mask))
        if self.training and self.dropout > 0:
            keep = torch.rand(standardised.shape[0], 1, device=standardised.device) >= self.dropout
            standardised = standardised * keep.to(standardised.dtype)
        return standardised


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
