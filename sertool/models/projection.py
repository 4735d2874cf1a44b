"""A pointwise projection of frame features before pooling (the authors' released models' ``model_seq``).

Three 1×1 convolutions over time with ReLU and dropout between them. A 1×1 convolution is the same
linear map applied to every frame, so it is written as ``nn.Linear`` on ``[B, T, D]`` frames: a
``Conv1d(D, P, 1)`` weight of shape ``[P, D, 1]`` is a Linear weight ``[P, D]`` with its last axis
dropped. Frames stay independent of each other, so padded frames cannot reach real ones; pooling then
ignores them.
"""
from __future__ import annotations

from torch import Tensor, nn

PROJECTION_DROPOUT = 0.1  # the authors' value, between the convolutions


class FrameProjection(nn.Sequential):
    """Linear(D→P) → ReLU → Dropout → Linear(P→P) → ReLU → Dropout → Linear(P→P), on every frame.

    The Linear layers sit at positions 0, 3 and 6, as the convolutions of the authors' ``model_seq``.

    Attributes:
        output_dim: the projected width P.
    """

    def __init__(self, input_dim: int, output_dim: int) -> None:
        if output_dim <= 0:
            raise ValueError(f"projection width must be positive, got {output_dim}")
        super().__init__(
            nn.Linear(input_dim, output_dim), nn.ReLU(), nn.Dropout(PROJECTION_DROPOUT),
            nn.Linear(output_dim, output_dim), nn.ReLU(), nn.Dropout(PROJECTION_DROPOUT),
            nn.Linear(output_dim, output_dim),
        )
        self.output_dim = output_dim

    def forward(self, frames: Tensor) -> Tensor:
        """``[B, T, D]`` → ``[B, T, P]``."""
        return super().forward(frames)
