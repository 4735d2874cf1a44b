"""What every speech backbone shares: the module contract, learnable layer weighting and mask helpers."""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from sertool.core.errors import SertoolError

LAYER_WEIGHTINGS = ("weighted", "last")
LOG_FLOOR = 1e-10  # mel power floor before the log: digital silence and zero padding


class SpeechBackbone(nn.Module):
    """A speech encoder: zero-padded 16 kHz waveforms in, frame features and a frame mask out.

    A pretrained encoder implements ``layer_states`` (the hidden states its frames are made of) and inherits
    ``forward``, which mixes them with ``layer_weights``; an encoder of its own (fbank) overrides ``forward``.
    The split lets a frozen encoder's states be computed once and cached (``--feature-cache``,
    ``sertool.models.frame_features``) while its layer weights still train. Modules named in ``_eval_only``
    (frozen pretrained encoders) stay in eval mode whatever ``train()`` is called with, so their dropout and
    stochastic layer drop never fire while the heads train.

    Attributes:
        output_dim: feature size ``D`` of the frames ``forward`` returns.
        layer_weights: the learnt mix of the hidden states (``layer_weighting="weighted"``), or None (the last).
        frame_rate: frames per second of ``layer_states`` (pretrained encoders).
    """

    output_dim: int
    layer_weights: LayerWeighting | None
    frame_rate: float

    def __init__(self) -> None:
        super().__init__()
        self._eval_only: list[str] = []

    def forward(self, waveforms: Tensor, sample_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Encode a batch: ``layer_states`` mixed by ``mix_layers``.

        Args:
            waveforms: ``[B, S]`` float32 at 16 kHz, zero-padded on the right.
            sample_mask: ``[B, S]`` bool, True on real samples (a prefix of each row).

        Returns:
            ``frames`` ``[B, T, D]`` (zero on padded frames) and ``frame_mask`` ``[B, T]`` bool, True on
            real frames.
        """
        states, frame_mask = self.layer_states(waveforms, sample_mask)
        return self.mix_layers(states) * frame_mask.unsqueeze(-1), frame_mask

    def layer_states(self, waveforms: Tensor, sample_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The hidden states the frames are mixed from, before any layer weight: every state the weighted sum
        reads (``layer_weighting="weighted"``), or the last alone.

        Args:
            waveforms: as ``forward``'s.
            sample_mask: as ``forward``'s.

        Returns:
            ``states`` ``[B, T, L, D]`` (``L = num_layer_states``; padded frames hold whatever the encoder
            left there) and ``frame_mask`` ``[B, T]``, as ``forward``'s.
        """
        raise NotImplementedError(f"{type(self).__name__} has no hidden states apart from its forward")

    @property
    def num_layer_states(self) -> int:
        """``L``: the hidden states ``layer_states`` returns per frame (1 without layer weights)."""
        return 1 if self.layer_weights is None else self.layer_weights.logits.numel()

    def mix_layers(self, states: Tensor) -> Tensor:
        """``[B, T, L, D]`` states (``layer_states``, or read from a cache) → ``[B, T, D]`` frames: their
        learnt weighted sum, or the one state there is."""
        return states[..., 0, :] if self.layer_weights is None else self.layer_weights.mix(states)

    @property
    def padding_invariant(self) -> bool:
        """Whether an utterance's states in a zero-padded batch equal its states alone (masks make them so);
        False: compute an utterance alone where its states must not depend on its batch (a cache)."""
        return True

    def frame_count(self, num_samples: int) -> int:
        """Frames ``layer_states`` makes of ``num_samples`` samples of audio (a training crop's frames)."""
        raise NotImplementedError(f"{type(self).__name__} does not say how many frames it makes")

    def front_end_settings(self) -> dict[str, object]:
        """Everything besides the encoder's weights that decides its ``layer_states`` for a given audio: what
        a cache of them is keyed on, with a digest of the weights (``sertool.models.frame_features``)."""
        raise NotImplementedError(f"{type(self).__name__}'s states are not cached")

    @property
    def drops_layers(self) -> bool:
        """Whether a training forward may skip trainable layers at random (LayerDrop): their parameters then
        get no gradient from that forward."""
        return False

    def train(self, mode: bool = True) -> SpeechBackbone:
        super().train(mode)
        for name in self._eval_only:
            self.get_submodule(name).eval()
        return self


class LayerWeighting(nn.Module):
    """A learnable softmax-weighted sum of hidden states (s3prl's "weighted sum"), uniform at init."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_layers))  # softmax(0, ..., 0) = uniform weights

    def forward(self, hidden_states: Sequence[Tensor]) -> Tensor:
        """Mix ``num_layers`` tensors of one shape ``[B, T, D]`` into one ``[B, T, D]``."""
        return self.mix(stack_layers(hidden_states))

    def mix(self, states: Tensor) -> Tensor:
        """Mix states stacked on their next-to-last dimension, ``[..., num_layers, D]`` → ``[..., D]``."""
        if states.shape[-2] != self.logits.numel():
            raise ValueError(f"expected {self.logits.numel()} hidden states, got {states.shape[-2]}")
        weights = torch.softmax(self.logits, dim=0).to(states.dtype)
        return torch.einsum("l,...ld->...d", weights, states)

    @property
    def weights(self) -> Tensor:
        """The current mixing weights (sum to 1), e.g. to log which layers the model relies on."""
        return torch.softmax(self.logits.detach(), dim=0)


def make_layer_weighting(layer_weighting: str, num_layers: int) -> LayerWeighting | None:
    """A ``LayerWeighting`` over ``num_layers`` states for ``"weighted"``, None for ``"last"``.

    Raises:
        SertoolError: any other value (names ``--layer-weighting``).
    """
    if layer_weighting not in LAYER_WEIGHTINGS:
        raise SertoolError(f"--layer-weighting {layer_weighting!r}: choose one of {', '.join(LAYER_WEIGHTINGS)}")
    return LayerWeighting(num_layers) if layer_weighting == "weighted" else None


def stack_layers(states: Sequence[Tensor]) -> Tensor:
    """``L`` hidden states ``[B, T, D]`` → ``[B, T, L, D]`` (one state: a view, no copy)."""
    return states[0].unsqueeze(-2) if len(states) == 1 else torch.stack(tuple(states), dim=-2)


def lengths_to_mask(lengths: Tensor, max_length: int) -> Tensor:
    """``[B]`` lengths → ``[B, max_length]`` bool mask, True on the first ``length`` positions."""
    return torch.arange(max_length, device=lengths.device) < lengths.unsqueeze(-1)


def pad_to_min_length(waveforms: Tensor, min_samples: int) -> Tensor:
    """Zero-pad ``[B, S]`` on the right to at least ``min_samples`` samples."""
    if torch.onnx.is_in_onnx_export():
        # A trace keeps whichever branch its example took: the length max(S, min_samples) is computed as a tensor
        # instead (not always S + min_samples: a group-norm front end normalises over the padded length too).
        # The ignore: arange takes a 0-d tensor as its end too (a trace records it as a value, not a constant).
        samples = torch.ones_like(waveforms[0], dtype=torch.long).sum()
        kept = torch.arange(samples.clamp(min=min_samples), device=waveforms.device)  # type: ignore[call-overload]
        return nn.functional.pad(waveforms, (0, min_samples)).index_select(-1, kept)
    missing = min_samples - waveforms.shape[-1]
    return nn.functional.pad(waveforms, (0, missing)) if missing > 0 else waveforms


def log_mel_power(waveforms: Tensor, mel_filters: Tensor, window: Tensor, *, hop_length: int,
                  center: bool) -> Tensor:
    """Natural-log mel power ``[B, mels, F]`` of ``[B, S]`` waveforms, in float32 whatever the autocast.

    The one computation of every log-mel front end (the fbank encoder's, the log-mel speaker statistics, the
    utterance statistics, Whisper's): power spectrum (``torch.stft``, FFT size ``len(window)``), projected on
    ``mel_filters`` ``[mels, freqs]``, floored at ``LOG_FLOOR``, natural log.

    Why autocast is off: the mel projection is a matrix product, which autocast runs in half precision. In
    fp16 the floor 1e-10 rounds to 0 (the smallest fp16 number is 6e-8), so silence and zero padding give
    log 0 = −inf, and NaN once a mask multiplies it by 0; in bf16 the power keeps 8 significant bits, so a
    GPU trained under ``--amp`` would see other features than a CPU evaluating in float32. These front ends
    have no weights and are a small part of the compute, so float32 costs little.

    Args:
        waveforms: ``[B, S]`` samples (any float dtype; computed in float32).
        mel_filters: ``[mels, len(window) // 2 + 1]`` filter bank.
        window: the analysis window; its length is the FFT size.
        hop_length: samples between frames.
        center: ``torch.stft``'s: pad each end by half a window (reflected) so frame ``t`` centres on sample
            ``t · hop_length``; False keeps every frame inside the signal.
    """
    with torch.autocast(waveforms.device.type, enabled=False):
        if torch.onnx.is_in_onnx_export():
            power = dft_power(waveforms.float(), window, hop_length=hop_length, center=center)
        else:
            power = torch.stft(waveforms.float(), window.numel(), hop_length, window=window.float(), center=center,
                               return_complex=True).abs() ** 2
        return torch.clamp(mel_filters.float() @ power, min=LOG_FLOOR).log()


def dft_power(waveforms: Tensor, window: Tensor, *, hop_length: int, center: bool) -> Tensor:
    """The power spectrum ``torch.stft(...).abs() ** 2`` of ``log_mel_power``, as a strided convolution with the
    windowed DFT's cosine and sine rows (computed in float64): what an ONNX graph computes instead.

    Not ONNX's STFT operator: onnxruntime computes a 400-point DFT about a hundred times less accurately than
    torch's FFT (on noise, the log-mel's largest error against float64 was 9e-4, against torch's 3e-6 and
    this convolution's 8e-6), and far worse on quiet bands (1.9 in the log of a tone's far bands, against 0.003
    here), which a per-utterance normalisation carries into every feature. ONNX has no complex numbers either.

    Args:
        waveforms: ``[B, S]`` float32.
        window: the analysis window; its length is the FFT size.
        hop_length: samples between frames.
        center: pad each end by half a window, reflected (``torch.stft``'s ``center``).

    Returns:
        ``[B, len(window) // 2 + 1, frames]`` float32, the frames of ``torch.stft``.
    """
    n_fft = window.numel()
    if center:
        waveforms = nn.functional.pad(waveforms[:, None], (n_fft // 2, n_fft // 2), mode="reflect")[:, 0]
    frequencies = torch.arange(n_fft // 2 + 1, dtype=torch.float64, device=window.device)[:, None]
    angles = 2 * torch.pi * frequencies * torch.arange(n_fft, dtype=torch.float64, device=window.device) / n_fft
    rows = window.double() * torch.cat([torch.cos(angles), torch.sin(angles)])  # [2F, N]: real, then imaginary
    parts = nn.functional.conv1d(waveforms[:, None], rows.float()[:, None], stride=hop_length)
    real, imaginary = parts.chunk(2, dim=1)
    return real.square() + imaginary.square()


def grad_context(module: nn.Module) -> AbstractContextManager:
    """``torch.no_grad()`` when nothing in ``module`` trains, so a frozen encoder keeps no activations.

    Checked at every call rather than once, so that a caller who unfreezes the module later gets
    gradients without rebuilding the backbone.
    """
    if any(parameter.requires_grad for parameter in module.parameters()):
        return nullcontext()
    return torch.no_grad()
