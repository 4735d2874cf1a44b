"""Utterance-level statistics of the raw log-mel spectrum: what the ridge floor reads, and the "wide" path.

One batched, masked computation (``log_mel_statistics``) serves three users:

- ``sertool baseline`` regresses on them, computed for whole utterances read from disk, in float64,
  without any normalisation (``utterance_statistics``; the ridge standardises each feature on the
  training split);
- ``--utterance-stats`` (``UtteranceStatistics``) concatenates them, standardised, to the pooled
  representation the heads read: a linear view of level and spectral balance beside the encoder;
- ``--floor-blend`` (``FloorBlend``) carries the ridge floor itself inside a trained model, and blends the
  network's prediction with it at a weight chosen on the validation split.

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
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from sertool.cache.statistics import AudioStatisticsCache, StatisticsSetup
from sertool.core.constants import attribute_subset
from sertool.data.dataset import load_utterance_audio
from sertool.data.records import ATTRIBUTES, Utterance
from sertool.models.backbones.base import LOG_FLOOR, lengths_to_mask
from sertool.models.backbones.fbank import (
    HOP_LENGTH,
    N_FFT,
    NUM_MEL_BINS,
    SAMPLE_RATE,
    mel_filter_bank,
    raw_log_mel,
)
from sertool.models.heads import LabelScaling
from sertool.models.ridge import CONSTANT_SCALE, RidgeModel, fit_ridge

FEATURE_GROUPS: tuple[str, ...] = ("mel_mean", "mel_std", "delta_std", "energy")
ENERGY_STATISTICS: tuple[str, ...] = ("mean", "std", "p10", "p50", "p90", "active_share")
ACTIVE_RANGE_DB = 30.0  # a frame within this many dB of the utterance's loudest counts as speech
_LOG_POWER_PER_DB = math.log(10.0) / 10.0  # natural-log power units per decibel
_PERCENTILES = (0.1, 0.5, 0.9)
# Raise it whenever the code changes what a statistics vector holds (tests/test_cache_versions.py pins its code).
STATISTICS_VERSION = 2


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
    return torch.cat([mean, std, delta_std, _energy_statistics(energy, mask, lengths)], dim=-1)


def _energy_statistics(energy: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
    """``ENERGY_STATISTICS`` of each row of ``energy`` ``[B, F]`` over its real frames (``mask``, ``lengths``).

    Batched, with no step that depends on a value read back from the tensors (so it traces into an ONNX graph
    of any batch and length): padded frames sort after the real ones, and each percentile interpolates
    between the sorted real frames at its rank, as ``torch.quantile`` does on the real frames alone.
    """
    count = lengths.to(energy.dtype)
    weight = mask.to(energy.dtype)
    mean = (energy * weight).sum(dim=1) / count
    std = (((energy - mean[:, None]) ** 2 * weight).sum(dim=1) / count).sqrt()
    ordered = energy.masked_fill(~mask, math.inf).sort(dim=1).values
    quantiles = torch.tensor(_PERCENTILES, dtype=energy.dtype, device=energy.device)
    ranks = quantiles * (count[:, None] - 1)  # [B, 3], as torch.quantile: linear between neighbouring ranks
    below = ordered.gather(1, ranks.floor().long())
    above = ordered.gather(1, ranks.ceil().long())
    percentiles = torch.lerp(below, above, ranks - ranks.floor())
    loudest = energy.masked_fill(~mask, -math.inf).amax(dim=1, keepdim=True)
    active = (energy >= loudest - ACTIVE_RANGE_DB * _LOG_POWER_PER_DB) & mask
    return torch.cat([mean[:, None], std[:, None], percentiles, (active.to(energy.dtype).sum(dim=1) / count)[:, None]],
                     dim=-1)


class Standardizer(nn.Module):
    """Standardises features by a mean and standard deviation fitted once, on the training split.

    ``fit`` sets them from the rows of every training clip (``sertool train`` calls it before the first
    step, on whole clips, as the ridge floor standardises its features); they never change while training,
    so an utterance's output depends neither on its batch nor on the step. They are buffers: every
    checkpoint (``last.pt``, ``best.pt``, exported and released folders) stores them, and a resumed run or
    a loaded model uses them as they were. A feature that did not vary over the training clips (a spread
    below ``CONSTANT_SCALE``, as for the ridge's ``Standardizer``) keeps scale 1. Using it before ``fit`` is
    an error: unstandardised log-mel statistics would be silently wrong.
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
        self.scale.copy_(torch.where(scale > CONSTANT_SCALE, scale, torch.ones_like(scale)))

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

    def standardised(self, waveforms: Tensor, sample_mask: Tensor) -> Tensor:
        """Standardised float64 statistics of right-padded ``[B, S]`` waveforms with ``[B, S]`` bool
        ``sample_mask``, never dropped (what the floor reads: ``FloorBlend``)."""
        return self.standardizer(self.statistics(waveforms, sample_mask).double())

    def forward(self, waveforms: Tensor, sample_mask: Tensor) -> Tensor:
        """Standardised float32 statistics (``standardised``), with the training-time ``dropout``."""
        standardised = self.standardised(waveforms, sample_mask).float()
        if self.training and self.dropout > 0:
            keep = torch.rand(standardised.shape[0], 1, device=standardised.device) >= self.dropout
            standardised = standardised * keep.to(standardised.dtype)
        return standardised


class FloorBlend(nn.Module):
    """The floor inside the model (``--floor-blend``), and the weight that blends the network's prediction with it.

    The floor is the ridge that ``sertool baseline`` fits (``sertool.models.ridge.fit_ridge``: features
    standardised on the training split, alpha chosen per attribute by validation CCC), written on the
    model's unit scale (``LabelScaling.to_unit`` is linear, so it stays linear): ``intercept +
    standardised statistics @ weights``, read from ``UtteranceStatistics.standardised`` (whose moments are
    the ridge's own) in float64. The model predicts ``blend · network + (1 − blend) · floor`` per attribute,
    where ``blend`` is chosen on the validation split at every validation (``choose_blend``). Everything
    here is a buffer: nothing trains by gradient, and every checkpoint stores the floor and the weights its
    predictions were chosen with. Using it before ``fit`` is an error, as for the standardiser.

    The floor is the ridge of every attribute, whatever the model predicts (its buffers have one column per
    attribute of ``ATTRIBUTES``, so that every model's floor has one shape); a model of fewer attributes
    (``train.attributes``) blends the columns of its own (``attributes``), and the others' weights stay 1, unused.
    """

    # Buffers (register_buffer), declared so that their type is known.
    weights: Tensor
    intercept: Tensor
    alphas: Tensor
    blend: Tensor

    def __init__(self, num_features: int = NUM_FEATURES, *, attributes: Sequence[str] = ATTRIBUTES) -> None:
        super().__init__()
        self.attributes = attribute_subset(attributes)
        self.columns = [ATTRIBUTES.index(name) for name in self.attributes]  # the model's, in the floor's columns
        self.register_buffer("weights", torch.zeros(num_features, len(ATTRIBUTES), dtype=torch.float64))
        self.register_buffer("intercept", torch.zeros(len(ATTRIBUTES), dtype=torch.float64))
        self.register_buffer("alphas", torch.zeros(len(ATTRIBUTES), dtype=torch.float64))  # 0: not fitted
        # The network's weight per attribute; the floor gets the rest (1: the network alone).
        self.register_buffer("blend", torch.ones(len(ATTRIBUTES), dtype=torch.float64))
        self.in_use = True  # False inside ``left_out``: the model predicts with its network alone

    @torch.no_grad()
    def fit(self, ridge: RidgeModel, label_scaling: LabelScaling) -> None:
        """Take ``ridge`` (fitted on ratings) onto the unit scale the model predicts on."""
        span = label_scaling.maximum - label_scaling.minimum
        self.weights.copy_(torch.from_numpy(ridge.weights / span))
        self.intercept.copy_(torch.from_numpy(np.asarray(label_scaling.to_unit(ridge.intercept))))
        self.alphas.copy_(torch.from_numpy(ridge.alphas))

    @property
    def fitted(self) -> bool:
        """Whether ``fit`` has set the floor (a chosen alpha is always positive)."""
        return bool((self.alphas > 0).all())

    @contextmanager
    def left_out(self) -> Iterator[None]:
        """Inside the block the model predicts with its network alone and never computes the floor (training's
        validations score the network, then blend it with the floor's predictions, computed once)."""
        self.in_use = False
        try:
            yield
        finally:
            self.in_use = True

    def floor(self, standardised: Tensor) -> Tensor:
        """The floor's ``[B, len(attributes)]`` float64 unit-scale prediction of the model's attributes from
        ``[B, NUM_FEATURES]`` standardised statistics, clipped to the unit scale (0..1: the rating scale's ends).

        A ridge is a linear function of statistics that are unbounded: far outside the training clips
        (digital silence sits dozens of standard deviations below any recording's level) it predicts far
        outside the rating scale (−21 for silence). Clipped, the floor never predicts what no rater could
        give, and its blend with a sigmoid network stays on the scale; inside the scale it is the ridge
        ``sertool baseline`` fits.

        Raises:
            RuntimeError: ``fit`` was never called.
        """
        if not self.fitted:
            raise RuntimeError("the floor was never fitted: call fit_utterance_statistics(model, training clips, "
                               "validation clips) before using the model")
        return (self.intercept[self.columns] + standardised @ self.weights[:, self.columns]).clamp(0.0, 1.0)

    def forward(self, network: Tensor, standardised: Tensor) -> Tensor:
        """The blend of ``[B, len(attributes)]`` unit-scale ``network`` predictions with the floor's prediction
        from ``[B, NUM_FEATURES]`` standardised float64 statistics, in float32 (``network``'s dtype when wider):
        a prediction, never rounded to an autocast's half precision.

        Raises:
            RuntimeError: ``fit`` was never called.
        """
        floor = self.floor(standardised)
        blend = self.blend[self.columns]
        blended = blend * network.double() + (1 - blend) * floor
        # A weight of 0 is the floor alone, even where the network's output is not finite (0 · NaN is NaN).
        return torch.where(blend > 0, blended, floor).to(torch.promote_types(network.dtype, torch.float32))

    @torch.no_grad()
    def take_blend(self, weights: np.ndarray) -> None:
        """Blend with the network's ``weights``, one per attribute of the model (``choose_blend``'s)."""
        self.blend[self.columns] = torch.from_numpy(np.asarray(weights, dtype=np.float64)).to(self.blend.device)


BLEND_GRID: tuple[float, ...] = tuple(step / 20 for step in range(21))  # the network's weight: 0, 0.05, ..., 1
BLEND_RESAMPLES = 400  # speaker resamples per validation: the 20th percentile of 400 draws moves by ~0.01 CCC
_BLEND_STREAM = 0x5EED_B1E0  # the resamples' random stream: the same split and predictions, the same choice


@dataclass(frozen=True)
class BlendChoice:
    """What ``choose_blend`` chose per attribute of the model (``attributes``, in ``ATTRIBUTES`` order), and the
    evidence behind it.

    ``weights`` is the network's weight; ``gain`` the CCC gain of that blend over the floor on the whole
    validation split; ``assured_gain`` the gain it keeps in ``confidence`` of the speaker resamples (its
    ``1 − confidence`` quantile), which the choice maximised; ``groups`` the number of speakers resampled.
    """

    weights: np.ndarray
    gain: np.ndarray
    assured_gain: np.ndarray
    groups: int
    confidence: float
    attributes: tuple[str, ...] = ATTRIBUTES

    def reasons(self) -> dict[str, str]:
        """Per attribute, one sentence: how much the network carries, and why."""
        share = f"{self.confidence:.0%} of {BLEND_RESAMPLES} resamples of the validation split's {self.groups} speakers"
        return {name: (f"the floor alone: no weight of the network gained over it in {share}" if weight == 0 else
                       f"network weight {weight:.2f}: its blend gains {gain:+.3f} CCC over the floor, and at least "
                       f"{assured:+.3f} in {share}")
                for name, weight, gain, assured in zip(self.attributes, self.weights, self.gain, self.assured_gain,
                                                      strict=True)}


def choose_blend(network: np.ndarray, floor: np.ndarray, labels: np.ndarray, label_scaling: LabelScaling, *,
                 speakers: Sequence[str | None] | None = None, confidence: float = 0.8,
                 attributes: Sequence[str] = ATTRIBUTES) -> BlendChoice:
    """Per attribute, the network's weight in ``BLEND_GRID`` whose gain over the floor best survives a change of
    speakers: the weight with the largest ``1 − confidence`` quantile of the CCC gain over the floor across
    ``BLEND_RESAMPLES`` bootstrap resamples of the validation split's speakers (drawn with replacement, each
    with all its utterances).

    Why not the best CCC on the split: on a small validation split (81 clips of 2 speakers) the weight of best
    CCC follows noise, and a network blended in on that evidence lost to the floor on the test speakers. The
    floor (weight 0) gains exactly 0 in every resample, so the network moves away from it only when its gain
    holds in ``confidence`` of the resamples; with many speakers the quantile approaches the split's gain and
    the choice approaches the best CCC. Utterances of unknown speaker are each their own group; with a single
    group, utterances are resampled instead. Each blend is scored as the model would predict it: mapped to
    ratings and clipped (``LabelScaling.ratings``). Ties go to the smaller weight (the floor's side).

    Args:
        network, floor: ``[N, len(attributes)]`` unit-scale predictions of the two systems of the split that
            chooses (the validation split).
        labels: ``[N, len(attributes)]`` its ratings.
        label_scaling: the model's.
        speakers: each utterance's speaker (None: unknown); None: every utterance its own group.
        confidence: the share of resamples in which the chosen gain must hold (0.5: the median gain).
        attributes: the columns' attributes (the model's, in ``ATTRIBUTES`` order).
    """
    count = len(labels)
    names = [f"#{index}" if speaker is None else f"s:{speaker}"
             for index, speaker in enumerate(speakers if speakers is not None else [None] * count)]
    codes = np.unique(np.asarray(names, dtype=object), return_inverse=True)[1].astype(np.int64)
    groups = int(codes.max()) + 1 if count else 0
    if groups < 2:  # one speaker: nothing to resample but its utterances
        codes, groups = np.arange(count), count
    drawn = np.random.default_rng(_BLEND_STREAM).integers(0, groups, size=(BLEND_RESAMPLES, groups))
    draws = np.stack([np.bincount(row, minlength=groups) for row in drawn]).astype(np.float64)  # [R, groups]
    grid = np.asarray(BLEND_GRID)
    blends = label_scaling.ratings(grid[:, None, None] * network[None] + (1 - grid[:, None, None]) * floor[None])
    whole = _resampled_ccc(blends, labels, codes, np.ones((1, groups)))[:, 0]  # [G, k]: the split as it is
    resampled = _resampled_ccc(blends, labels, codes, draws)  # [G, R, k]
    gains = resampled - resampled[0]  # BLEND_GRID[0] is the floor: its gain is 0 in every resample
    assured = np.quantile(gains, 1 - confidence, axis=1)  # [G, k]
    best = np.argmax(assured, axis=0)  # the first maximum: the smaller weight on a tie
    columns = np.arange(len(attributes))
    return BlendChoice(weights=grid[best], gain=whole[best, columns] - whole[0], assured_gain=assured[best, columns],
                       groups=groups, confidence=confidence, attributes=tuple(attributes))


def _resampled_ccc(predictions: np.ndarray, labels: np.ndarray, codes: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """CCC of ``[G, N, k]`` predictions against ``[N, k]`` labels in each resample: ``[G, R, k]``, as
    ``ccc_scores`` of the resampled rows would give (population variances; 0 where both sides are constant).

    A resample draws group ``j`` (utterance ``i`` belongs to group ``codes[i]``) ``draws[r, j]`` times, so its
    moments are sums over groups of each group's sums: one small matrix product per moment, whatever N.
    """
    grid, count, width = predictions.shape
    groups = draws.shape[1]

    def per_group(values: np.ndarray) -> np.ndarray:  # [N, K] → [groups, K]: each group's sum
        sums = np.zeros((groups, values.shape[1]))
        np.add.at(sums, codes, values)
        return sums

    def mean(values: np.ndarray) -> np.ndarray:  # [G, N, 3] → [G, R, 3]
        flat = values.transpose(1, 0, 2).reshape(count, grid * width)
        return (draws @ per_group(flat) / total).reshape(-1, grid, width).transpose(1, 0, 2)

    total = draws @ per_group(np.ones((count, 1)))  # [R, 1]: utterances in each resample
    mean_y = draws @ per_group(labels) / total  # [R, 3]
    var_y = draws @ per_group(labels ** 2) / total - mean_y ** 2
    mean_p = mean(predictions)
    var_p = mean(predictions ** 2) - mean_p ** 2
    cov = mean(predictions * labels[None]) - mean_p * mean_y
    denominator = var_p + var_y + (mean_p - mean_y) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 1e-12, 2 * cov / np.maximum(denominator, 1e-12), 0.0)


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


def statistics_setup() -> StatisticsSetup[Utterance]:
    """The log-mel statistics as ``sertool.cache.statistics`` keys, stores and computes them: the setup key
    names every constant of the computation, and ``STATISTICS_VERSION`` its code."""
    identity = {"version": STATISTICS_VERSION, "sample_rate": SAMPLE_RATE, "n_fft": N_FFT,
                "hop_length": HOP_LENGTH, "mel_bins": NUM_MEL_BINS, "log_floor": LOG_FLOOR,
                "active_range_db": ACTIVE_RANGE_DB, "percentiles": list(_PERCENTILES),
                "features": feature_names()}
    return StatisticsSetup(name="log-mel-statistics", identity=identity, dim=NUM_FEATURES,
                           metadata={"feature_groups": ",".join(FEATURE_GROUPS)}, read=load_utterance_audio,
                           extractor=StatisticsExtractor, label="log-mel statistics of {:,} utterances")


class StatisticsCache(AudioStatisticsCache[Utterance]):
    """The log-mel statistics of whole utterances, computed once per audio content and kept on disk: an
    ``AudioStatisticsCache`` (``sertool.cache.statistics``: keys, layout, worker processes) of
    ``statistics_setup()``.

    Args:
        cache_dir: sertool's cache folder (None: ``$SERTOOL_CACHE`` or ``~/.cache/sertool``).
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__(statistics_setup(), cache_dir)


def utterance_statistics(utterances: Sequence[Utterance], *, cache_dir: str | os.PathLike[str] | None = None,
                         num_workers: int = 0, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """``[N, NUM_FEATURES]`` statistics of whole utterances (read at 16 kHz, mono), from the
    ``StatisticsCache`` where it has them.

    Args:
        utterances: the utterances, read whole (a window, ``span_s``, exactly its span).
        cache_dir: sertool's cache folder (None: ``$SERTOOL_CACHE`` or ``~/.cache/sertool``).
        num_workers: processes that read and compute the missing ones (0: this one).
        progress: called as ``progress(done, total)`` over the utterances computed.

    Raises:
        SertoolError: an audio file cannot be read (naming it).
    """
    return StatisticsCache(cache_dir).get(utterances, num_workers=num_workers, progress=progress)


def fit_utterance_statistics(model: torch.nn.Module, utterances: Sequence[Utterance],
                             valid_utterances: Sequence[Utterance] = (), *,
                             statistics: Callable[[Sequence[Utterance]], np.ndarray] = utterance_statistics) -> None:
    """Fit the statistics' standardiser (``--utterance-stats``, ``--floor-blend``) on whole training clips,
    and the floor as ``sertool baseline`` fits its ridge; a no-op for a model without either.

    The moments are those the ridge floor standardises its features by: the statistics of each clip of
    ``utterances`` read whole, whatever crop training then uses. The floor is that ridge: fitted on
    ``utterances``, its alpha chosen per attribute on ``valid_utterances`` (which only choose, as they only
    choose a trained system's checkpoint).

    Args:
        model: a ``SERModel``.
        utterances: the training split (never a validation or test clip), labelled.
        valid_utterances: the validation split, labelled; needed with a floor only.
        statistics: computes the ``[N, NUM_FEATURES]`` statistics of clips (``utterance_statistics`` with the
            run's cache folder, workers and progress).

    Raises:
        ValueError: a floor and no validation utterances.
    """
    wide = getattr(model, "utterance_stats", None)
    floor = getattr(model, "floor_blend", None)
    if wide is None:
        return
    if floor is not None and not valid_utterances:
        raise ValueError("fitting the floor needs the validation utterances (they choose its alpha)")
    clips = [*utterances, *valid_utterances] if floor is not None else list(utterances)
    rows = statistics(clips)
    train_rows, valid_rows = rows[:len(utterances)], rows[len(utterances):]
    wide.standardizer.fit(torch.from_numpy(train_rows))
    if floor is not None:
        ridge, _ = fit_ridge(train_rows, _ratings(utterances), valid_rows, _ratings(valid_utterances))
        floor.fit(ridge, model.label_scaling)


def _ratings(utterances: Sequence[Utterance]) -> np.ndarray:
    return np.array([utt.labels() for utt in utterances], dtype=np.float64).reshape(len(utterances), len(ATTRIBUTES))
