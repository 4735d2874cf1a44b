"""The optimiser and the learning-rate schedule: AdamW with two learning rates, warm-up then decay."""
from __future__ import annotations

import math
from typing import Any

import torch

from sertool.core.config import SCHEDULES, TrainConfig
from sertool.core.errors import SertoolError

PLATEAU_FACTOR = 0.5  # "plateau" halves the learning rate after a validation without improvement


def build_optimizer(parameter_groups: dict[str, list[torch.nn.Parameter]], config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with ``lr_backbone`` for pretrained encoders, ``lr_lora`` for LoRA adapters (default:
    ``lr_backbone``, the rate they had before they had a group of their own) and ``lr_heads`` for what starts
    from scratch; empty groups are left out.

    Each group remembers its peak rate as ``base_lr``; the schedule scales it every step.
    """
    rates = {"backbone": config.lr_backbone, "heads": config.lr_heads,
             "lora": config.lr_backbone if config.lr_lora is None else config.lr_lora}
    groups = [
        {"params": parameters, "lr": rates[name], "base_lr": rates[name], "name": name}
        for name, parameters in parameter_groups.items()
        if parameters
    ]
    if not groups:
        raise SertoolError("nothing to train: every parameter is frozen")
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(saved)``, also for a ``last.pt`` written before the LoRA adapters had a group
    of their own: there they were the last parameters of "backbone" (``SERModel.parameter_groups``), so the
    parameters are the same, in the same order, cut into fewer groups. Such a state is cut again as the
    optimiser's groups are, each with the optimiser's own settings (the adapters' rate was and is
    ``lr_backbone`` unless ``lr_lora`` says otherwise); the per-parameter moments and steps are kept as saved.

    Raises:
        ValueError: the state does not fit the optimiser (another model), as ``load_state_dict``.
    """
    groups = saved.get("param_groups")
    names = [group.get("name") for group in optimizer.param_groups]
    if isinstance(groups, list) and "lora" in names and all(group.get("name") != "lora" for group in groups):
        indices = [index for group in groups for index in group["params"]]
        sizes = [len(group["params"]) for group in optimizer.param_groups]
        if len(indices) == sum(sizes):
            starts = [sum(sizes[:position]) for position in range(len(sizes))]
            regrouped = [{**{key: value for key, value in group.items() if key != "params"},
                          "params": indices[start:start + size]}
                         for group, start, size in zip(optimizer.param_groups, starts, sizes, strict=True)]
            saved = {**saved, "param_groups": regrouped}
    optimizer.load_state_dict(saved)


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
