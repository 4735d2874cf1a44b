"""Masked pooling of frame features into one vector per utterance.

Padded frames never reach the result: they are zeroed before any arithmetic (so even NaN padding is
harmless) and excluded from every sum and softmax. A padded batch therefore pools exactly like each
utterance alone, up to float rounding.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sertool.core.errors import SertoolError

# Floor of the attention-weighted variance before the square root: keeps the gradient finite for a
# feature that is constant over an utterance (a single-frame utterance, a dead channel).
_VARIANCE_FLOOR = 1e-5


def masked_mean(frames: Tensor, frame_mask: Tensor) -> Tensor:
    """Mean over the valid frames of each utterance.

    Args:
        frames: ``[B, T, D]``.
        frame_mask: ``[B, T]`` bool (or 0/1), True where a frame is real.

    Returns:
        ``[B, D]`` in float32 at least (``frames``' dtype when wider). Sum and count are float32 too: a bf16
        count keeps 8 significant bits (550 frames count as 552), and a mean over hundreds of bf16 frames is
        more precise than bf16 could hold.

    Raises:
        ValueError: an utterance has no valid frame.
    """
    mask = _checked_mask(frames, frame_mask)
    dtype = torch.promote_types(frames.dtype, torch.float32)
    total = torch.where(mask.unsqueeze(-1), frames, torch.zeros_like(frames)).sum(dim=1, dtype=dtype)
    return total / mask.sum(dim=1, keepdim=True).to(dtype)


class MeanPooling(nn.Module):
    """Masked mean over time; ``output_dim == input_dim``."""

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.output_dim: int = input_dim

    def forward(self, frames: Tensor, frame_mask: Tensor) -> Tensor:
        return masked_mean(frames, frame_mask)


class AttentiveStatisticsPooling(nn.Module):
    """Attention-weighted mean ⊕ standard deviation over the valid frames (as the challenge baseline).

    Each frame gets a score ``v · tanh(W x + b)``; a softmax over the valid frames of the utterance turns
    the scores into weights; the output concatenates the weighted mean and the weighted standard
    deviation, so ``output_dim == 2 · input_dim``.
    """

    def __init__(self, input_dim: int, *, attention_dim: int | None = None) -> None:
        """
        Args:
            input_dim: frame feature width D.
            attention_dim: width of the tanh layer; default D, as the baseline.
        """
        super().__init__()
        attention_dim = attention_dim or input_dim
        self.projection = nn.Linear(input_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1, bias=False)  # a bias would cancel in the softmax
        self.output_dim: int = 2 * input_dim

    def forward(self, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """``[B, T, D]`` frames and ``[B, T]`` mask -> ``[B, 2·D]``."""
        mask = _checked_mask(frames, frame_mask)
        frames = torch.where(mask.unsqueeze(-1), frames, torch.zeros_like(frames))
        scores = self.score(torch.tanh(self.projection(frames))).squeeze(-1)
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1).unsqueeze(-1)  # exactly 0 on padded frames
        mean = (weights * frames).sum(dim=1)
        variance = (weights * (frames - mean.unsqueeze(1)).square()).sum(dim=1)
        std = variance.clamp(min=_VARIANCE_FLOOR).sqrt()
        return torch.cat([mean, std], dim=-1)


POOLINGS: dict[str, type[AttentiveStatisticsPooling] | type[MeanPooling]] = {
    "attentive": AttentiveStatisticsPooling,
    "mean": MeanPooling,
}


def build_pooling(name: str, input_dim: int) -> MeanPooling | AttentiveStatisticsPooling:
    """The pooling named by ``ModelConfig.pooling``; its ``output_dim`` sizes the heads.

    Raises:
        SertoolError: unknown name.
    """
    if name not in POOLINGS:
        raise SertoolError(f"--pooling {name}: unknown pooling; choose one of {', '.join(POOLINGS)}")
    return POOLINGS[name](input_dim)


def _checked_mask(frames: Tensor, frame_mask: Tensor) -> Tensor:
    if frames.ndim != 3 or frame_mask.shape != frames.shape[:2]:
        raise ValueError(f"pooling: frames {tuple(frames.shape)} need a [B, T] mask, got {tuple(frame_mask.shape)}")
    mask = frame_mask.to(device=frames.device, dtype=torch.bool)
    # One host sync per batch; an utterance without frames would otherwise pool to NaN or silently to 0.
    if not bool(mask.any(dim=1).all()):
        raise ValueError("pooling: an utterance has no valid frame (is the audio shorter than one frame?)")
    return mask
