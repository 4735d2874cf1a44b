"""The optimiser and the learning-rate schedule: AdamW with two learning rates, warm-up then decay."""
from __future__ import annotations

import math
from typing import Any

import torch

from sertool.core.config import SCHEDULES, TrainConfig
from sertool.core.errors import SertoolError

PLATEAU_FACTOR = 0.5  # "plateau" halves the learning rate after a validation without improvement


def build_optimizer(parameter_groups: dict[str, list[torch.nn.Parameter]], config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with ``lr_backbone`` for pretrained encoders and ``lr_heads`` for what starts from scratch.

    Each group remembers its peak rate as ``base_lr``; the schedule scales it every step.
    """
    rates = {"backbone": config.lr_backbone, "heads": config.lr_heads}
    groups = [
        {"params": parameters, "lr": rates[name], "base_lr": rates[name], "name": name}
        for name, parameters in parameter_groups.items()
        if parameters
    ]
    if not groups:
        raise SertoolError("nothing to train: every parameter is frozen")
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


class LRSchedule:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to zero, a plateau rule
    (halve on a validation without improvement), or constant. Its whole state is two numbers."""

    def __init__(self, config: TrainConfig, total_steps: int) -> None:
        if config.schedule not in SCHEDULES:
            raise SertoolError(f"--schedule {config.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        self.kind = config.schedule
        self.total_steps = max(1, total_steps)
        self.warmup_steps = int(config.warmup_fraction * self.total_steps)
        self.plateau_scale = 1.0

    def multiplier(self, step: int) -> float:
        """Factor on each group's ``base_lr`` at optimiser step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.kind == "cosine":
            progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.plateau_scale

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's rate for ``step``; returns the multiplier."""
        factor = self.multiplier(step)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        return factor

    def on_validation(self, improved: bool) -> None:
        """The plateau rule's only input."""
        if self.kind == "plateau" and not improved:
            self.plateau_scale *= PLATEAU_FACTOR

    def state_dict(self) -> dict[str, Any]:
        return {"total_steps": self.total_steps, "plateau_scale": self.plateau_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total_steps = int(state["total_steps"])
        self.plateau_scale = float(state["plateau_scale"])
