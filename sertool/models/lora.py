"""LoRA adapters (Hu et al., 2021) for frozen transformer encoders.

A wrapped linear layer computes ``W x + (alpha / rank) · B A x`` with ``W`` frozen and only ``A``, ``B``
trained. ``B`` starts at zero, so a fresh adapter leaves the model's outputs exactly unchanged.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float) -> None:
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.base = base
        for parameter in self.base.parameters():
            parameter.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear; B = 0 keeps the product zero
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scaling


def apply_lora(module: nn.Module, *, rank: int, alpha: float, target_modules: Sequence[str]) -> int:
    """Wrap every ``nn.Linear`` inside ``module`` whose attribute name is in ``target_modules``.

    Args:
        module: the (frozen) encoder to adapt, modified in place.
        rank: rank of the update.
        alpha: scale numerator; the update is multiplied by ``alpha / rank``.
        target_modules: attribute names of the linear layers to wrap, e.g. ``("q_proj", "v_proj")``.

    Returns:
        How many layers were wrapped.

    Raises:
        ValueError: no layer matched (a wrong name would otherwise silently train nothing).
    """
    targets = set(target_modules)
    matches = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if name in targets and isinstance(child, nn.Linear)
    ]
    if not matches:
        raise ValueError(f"no nn.Linear named any of {sorted(targets)} in {type(module).__name__}")
    for parent, name, child in matches:
        setattr(parent, name, LoRALinear(child, rank=rank, alpha=alpha))
    return len(matches)
