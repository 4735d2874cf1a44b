"""sertool's own small speech encoder, trained from scratch on log-mel filter banks.

It exists so that CPU users and the demo can train a real model in minutes. Design choices:

- front end: 80 log-mel bands (25 ms window, 10 ms hop, uncentred frames, so a frame never reaches
  past its utterance's end), normalised per utterance by one mean and variance over all its real frames
  and bands. That removes the recording gain (as WavLM's waveform normalisation does) but keeps the
  spectral envelope — spectral tilt is a cue of vocal effort, formants and pitch of speaker and gender.
  Normalising each band separately would remove the envelope: on the small demo corpus it cost 0.25
  dominance CCC and most of the gender head's accuracy. The front end computes in float32 under any
  ``--amp`` (``log_mel_power``); the convolutions after it run in the autocast dtype;
- two stride-2 convolutions subsample ×4 to 40 ms frames, then ConvNeXt-style residual blocks (depthwise
  temporal conv → LayerNorm → pointwise MLP), width ``fbank_dim``;
- no BatchNorm (it would make an utterance's features depend on its batch); padded positions are zeroed
  before every convolution, so padding never leaks into real frames and a padded batch equals one
  utterance at a time;
- optional SpecAugment (``spec_augment``, training only): each clip gets ``FREQ_MASKS`` bands of up to
  ``FREQ_MASK_BINS`` mel bins and ``TIME_MASKS`` spans of up to ``TIME_MASK_SHARE`` of its frames set to 0,
  the normalised features' mean. The masks come from the global torch generator, like dropout, so a seed
  (and a resumed run's restored RNG state) reproduces them; evaluation never masks.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sertool.core.constants import SAMPLE_RATE
from sertool.data import dsp
from sertool.models.backbones.base import (
    SpeechBackbone,
    lengths_to_mask,
    log_mel_power,
    make_layer_weighting,
    pad_to_min_length,
)

N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms hop
NUM_MEL_BINS = 80
NORMALIZATION_EPS = 1e-5
NUM_BLOCKS = 4
DEPTHWISE_KERNEL = 7  # frames of 40 ms: a 280 ms receptive field per block
MLP_EXPANSION = 2
FREQ_MASKS, FREQ_MASK_BINS = 2, 8  # SpecAugment's "LB"-style policy, scaled to clips of a few seconds
TIME_MASKS, TIME_MASK_SHARE = 2, 0.1


def mel_filter_bank() -> Tensor:
    """``[80, 201]`` HTK-scale mel filters from 20 Hz to 8 kHz for a 400-point FFT at 16 kHz, as Kaldi's fbank."""
    return dsp.mel_filter_bank(num_freqs=N_FFT // 2 + 1, min_hz=20.0, max_hz=SAMPLE_RATE / 2, num_mels=NUM_MEL_BINS,
                               sample_rate=SAMPLE_RATE)


def raw_log_mel(waveforms: Tensor, sample_mask: Tensor, mel_filters: Tensor, window: Tensor) -> tuple[Tensor, Tensor]:
    """Log-mel power ``[B, F, 80]`` (float32 whatever the autocast: ``log_mel_power``) of right-padded
    waveforms, and the frames wholly inside each utterance."""
    sample_lengths = sample_mask.sum(dim=-1)
    waveforms = pad_to_min_length(waveforms * sample_mask, N_FFT)
    log_mel = log_mel_power(waveforms, mel_filters, window, hop_length=HOP_LENGTH, center=False).transpose(1, 2)
    mel_lengths = (sample_lengths.clamp(min=N_FFT) - N_FFT) // HOP_LENGTH + 1
    return log_mel, mel_lengths


class FbankBackbone(SpeechBackbone):
    """Log-mel front end plus a compact convolutional encoder; every parameter trains.

    Its "hidden states" for layer weighting are the subsampling output and each block's output; the
    chosen (or mixed) state goes through a final LayerNorm.

    Args:
        dim: feature width ``D`` (``ModelConfig.fbank_dim``).
        layer_weighting: ``"weighted"`` or ``"last"``.
        num_blocks: residual blocks after the subsampling.
        spec_augment: mask bands and spans of the log-mel input while training.
    """

    # Buffers (register_buffer), declared so that their type is known.
    mel_filters: Tensor
    window: Tensor

    def __init__(self, dim: int = 256, *, layer_weighting: str = "weighted", num_blocks: int = NUM_BLOCKS,
                 spec_augment: bool = False) -> None:
        super().__init__()
        self.spec_augment = spec_augment
        self.register_buffer("mel_filters", mel_filter_bank(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.output_dim = dim
        self.subsample = nn.ModuleList(
            [
                nn.Conv1d(NUM_MEL_BINS, dim, kernel_size=3, stride=2, padding=1),
                nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1),
            ]
        )
        self.blocks = nn.ModuleList([_ConvBlock(dim) for _ in range(num_blocks)])
        self.layer_weights = make_layer_weighting(layer_weighting, num_blocks + 1)
        self.final_norm = nn.LayerNorm(dim)

    def log_mel(self, waveforms: Tensor, sample_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Log-mel features normalised per utterance (one mean and variance over its real frames and bands).

        Returns:
            ``features`` ``[B, F, 80]`` in float32 (zero on padded frames) and ``mel_lengths`` ``[B]``: the frames
            that lie wholly inside each utterance (one for an utterance shorter than 25 ms).
        """
        log_mel, mel_lengths = raw_log_mel(waveforms, sample_mask, self.mel_filters, self.window)
        mask = lengths_to_mask(mel_lengths, log_mel.shape[1]).unsqueeze(-1).to(log_mel.dtype)
        count = mel_lengths.view(-1, 1, 1).to(log_mel.dtype) * log_mel.shape[-1]
        mean = (log_mel * mask).sum(dim=(1, 2), keepdim=True) / count
        variance = ((log_mel - mean) ** 2 * mask).sum(dim=(1, 2), keepdim=True) / count
        return (log_mel - mean) / torch.sqrt(variance + NORMALIZATION_EPS) * mask, mel_lengths

    def forward(self, waveforms: Tensor, sample_mask: Tensor) -> tuple[Tensor, Tensor]:
        """See ``SpeechBackbone.forward``. Frames are 40 ms: ``T = ceil(ceil(mel_frames / 2) / 2)``."""
        with torch.no_grad():  # the front end has no parameters
            features, lengths = self.log_mel(waveforms, sample_mask)
            if self.spec_augment and self.training:
                features = spec_augment(features, lengths)
        hidden = features.transpose(1, 2)  # [B, C, T] for the convs
        for conv in self.subsample:
            hidden = nn.functional.gelu(conv(hidden))
            lengths = (lengths - 1) // 2 + 1  # kernel 3, stride 2, padding 1
            hidden = hidden * lengths_to_mask(lengths, hidden.shape[-1]).unsqueeze(1)
        frame_mask = lengths_to_mask(lengths, hidden.shape[-1])
        keep = frame_mask.unsqueeze(-1).to(hidden.dtype)
        states = [hidden.transpose(1, 2)]  # [B, T, D] from here on
        for block in self.blocks:
            states.append(block(states[-1], keep))
        mixed = states[-1] if self.layer_weights is None else self.layer_weights(states)
        return self.final_norm(mixed) * keep, frame_mask


def spec_augment(features: Tensor, lengths: Tensor) -> Tensor:
    """``features`` ``[B, F, 80]`` with random bands and spans of each clip's real frames set to 0.

    Each clip draws ``FREQ_MASKS`` widths in ``[0, FREQ_MASK_BINS]`` and ``TIME_MASKS`` widths in
    ``[0, TIME_MASK_SHARE · its frames]``, each at a uniform position; padded frames stay 0.
    """
    masked = features.clone()
    for row, length in enumerate(lengths.tolist()):
        for _ in range(FREQ_MASKS):
            width = int(torch.randint(0, FREQ_MASK_BINS + 1, ()))
            start = int(torch.randint(0, NUM_MEL_BINS - width + 1, ()))
            masked[row, :length, start:start + width] = 0
        for _ in range(TIME_MASKS):
            width = int(torch.randint(0, int(TIME_MASK_SHARE * length) + 1, ()))
            start = int(torch.randint(0, length - width + 1, ()))
            masked[row, start:start + width, :] = 0
    return masked


class _ConvBlock(nn.Module):
    """ConvNeXt-style residual block on ``[B, T, D]``; input and output are zero on padded frames."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(dim, dim, DEPTHWISE_KERNEL, padding=DEPTHWISE_KERNEL // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, MLP_EXPANSION * dim), nn.GELU(), nn.Linear(MLP_EXPANSION * dim, dim))

    def forward(self, hidden: Tensor, keep: Tensor) -> Tensor:
        """``hidden`` ``[B, T, D]``, zero where ``keep`` ``[B, T, 1]`` is 0."""
        mixed_in_time = self.depthwise(hidden.transpose(1, 2)).transpose(1, 2)
        return (hidden + self.mlp(self.norm(mixed_in_time))) * keep
