"""Frozen pretrained speaker embeddings ("+ S Emb"): an x-vector model of transformers.

The paper concatenates a pretrained speaker extractor's utterance embedding to the pooled speech
representation (it hurt there; sertool keeps it as an ablation). Any ``AutoModelForAudioXVector`` model
works, e.g. ``microsoft/wavlm-base-plus-sv``. The name ``log-mel-stats`` selects a parameter-free stand-in
(mean and standard deviation of each log-mel band: the oldest speaker representation there is) for the
demo scale, where no pretrained speaker model can be downloaded.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from sertool.core.errors import SertoolError
from sertool.core.hub import load_pretrained, spelled
from sertool.models.backbones import normalize_per_utterance
from sertool.models.backbones.base import pad_to_min_length

log = logging.getLogger(__name__)

LOG_MEL_STATS = "log-mel-stats"  # the built-in stand-in's name

_MAX_SEARCH_SAMPLES = 5 * 16_000  # 5 s: far beyond any x-vector's receptive field


class SpeakerEmbedder(nn.Module):
    """A frozen x-vector model: ``[B, S]`` waveforms and sample mask -> ``[B, output_dim]`` embeddings.

    Each utterance runs alone, unpadded, exactly as the model's own single-utterance use, so batching
    never changes an embedding. Batched x-vector inference is not exact in transformers: its statistics
    pooling counts valid TDNN frames without the layers' dilation, so a few frames computed from padding
    enter the mean and std, and base-size models (``feat_extract_norm="group"``) normalise their CNN
    features over the padded length. The model is small and runs without gradients, so the loop is cheap
    next to the backbone.
    """

    def __init__(self, model_name_or_path: str, *, flag: str = "--speaker-embedding",
                 pretrained_weights: bool = True) -> None:
        """
        Args:
            model_name_or_path: hub id or local folder of an ``AutoModelForAudioXVector`` model.
            flag: the option that names it, as the caller spells it (``--speaker-embedding``, or
                ``speaker_embedding=`` in Python: ``sertool.core.hub.OptionSpelling``), for messages.
            pretrained_weights: False builds the model from its config alone, with random weights (a memory
                plan's model).

        Raises:
            SertoolError: the model cannot be loaded.
        """
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioXVector

        super().__init__()
        self.model = (load_pretrained(AutoModelForAudioXVector.from_pretrained, model_name_or_path, flag=flag)
                      if pretrained_weights else
                      AutoModelForAudioXVector.from_config(load_pretrained(AutoConfig.from_pretrained,
                                                                           model_name_or_path, flag=flag)))
        self.model.requires_grad_(False)
        self.model.eval()
        self.output_dim: int = self.model.config.xvector_output_dim
        self.min_samples = _min_samples(self.model)
        try:
            extractor = load_pretrained(AutoFeatureExtractor.from_pretrained, model_name_or_path, flag=flag)
            self.normalize_input = bool(getattr(extractor, "do_normalize", False))
        except SertoolError:
            # No preprocessor config next to the model: feed the waveform as it is.
            log.warning("%s has no feature extractor config; waveforms are not normalised",
                        spelled(flag, model_name_or_path))
            self.normalize_input = False

    def train(self, mode: bool = True) -> "SpeakerEmbedder":
        """Always in eval mode: the model is frozen, its dropout would only add noise."""
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, waveforms: Tensor, sample_mask: Tensor) -> Tensor:
        """Embeddings of right-padded ``[B, S]`` waveforms with ``[B, S]`` bool ``sample_mask``.

        An utterance too short for the x-vector's receptive field (two TDNN output frames, about 0.3 s
        for the usual architecture) is zero-padded to it, the zeros counting as audio.
        """
        mask = sample_mask.to(torch.bool)
        waveforms = waveforms * mask  # padding must be exact zeros
        if self.normalize_input:
            waveforms = normalize_per_utterance(waveforms, mask)
        lengths = mask.sum(dim=1).clamp(min=self.min_samples).tolist()
        waveforms = pad_to_min_length(waveforms, self.min_samples)
        embeddings = [self.model(input_values=row[None, :length]).embeddings
                      for row, length in zip(waveforms, lengths, strict=True)]
        return torch.cat(embeddings)


class LogMelStatistics(nn.Module):
    """Mean ⊕ standard deviation of each of 80 log-mel bands over an utterance's real frames (160-d).

    No parameters, no download: a crude but real speaker representation (vocal-tract and pitch shape the
    long-term spectrum), used where a pretrained x-vector model is out of reach.
    """

    # Buffers (register_buffer), declared so that their type is known.
    mel_filters: Tensor
    window: Tensor

    def __init__(self) -> None:
        super().__init__()
        from sertool.models.backbones.fbank import N_FFT, NUM_MEL_BINS, mel_filter_bank

        self.register_buffer("mel_filters", mel_filter_bank(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.output_dim: int = 2 * NUM_MEL_BINS

    @torch.no_grad()
    def forward(self, waveforms: Tensor, sample_mask: Tensor) -> Tensor:
        """``[B, 160]`` float32 statistics of right-padded ``[B, S]`` waveforms with ``[B, S]`` bool ``sample_mask``,
        whatever the autocast: the log-mel is float32 (``raw_log_mel``), and so is all that follows it."""
        from sertool.models.backbones.base import lengths_to_mask
        from sertool.models.backbones.fbank import raw_log_mel

        log_mel, lengths = raw_log_mel(waveforms, sample_mask.to(torch.bool), self.mel_filters, self.window)
        mask = lengths_to_mask(lengths, log_mel.shape[1]).unsqueeze(-1).to(log_mel.dtype)
        count = lengths.view(-1, 1).to(log_mel.dtype)
        mean = (log_mel * mask).sum(dim=1) / count
        variance = (((log_mel - mean[:, None]) ** 2) * mask).sum(dim=1) / count
        return torch.cat([mean, variance.sqrt()], dim=-1)


def build_speaker_embedder(name: str, *, flag: str = "--speaker-embedding",
                           pretrained_weights: bool = True) -> LogMelStatistics | SpeakerEmbedder:
    """``LogMelStatistics`` for ``log-mel-stats``, else a pretrained ``SpeakerEmbedder`` (its weights random with
    ``pretrained_weights=False``)."""
    if name == LOG_MEL_STATS:
        return LogMelStatistics()
    return SpeakerEmbedder(name, flag=flag, pretrained_weights=pretrained_weights)


def _min_samples(model: Any) -> int:  # duck-typed: a transformers x-vector model
    """The shortest input whose TDNN output has two frames (the x-vector's std needs two).

    TDNN layer ``i`` shortens the sequence by ``(kernel_i − 1) · dilation_i`` frames.
    """
    config = model.config
    frames_lost = sum((kernel - 1) * dilation
                      for kernel, dilation in zip(config.tdnn_kernel, config.tdnn_dilation, strict=True))
    candidates = torch.arange(1, _MAX_SEARCH_SAMPLES + 1)
    enough = model._get_feat_extract_output_lengths(candidates) - frames_lost >= 2
    if not enough.any():
        raise ValueError(f"{type(model).__name__}: under two x-vector frames up to {_MAX_SEARCH_SAMPLES} samples")
    return int(candidates[enough][0])
