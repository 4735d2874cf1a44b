"""LoRA adapters (Hu et al., 2021) for frozen transformer encoders.

A wrapped linear layer computes ``W x + (alpha / rank) · B A x`` with ``W`` frozen and only ``A``, ``B``
trained. ``B`` starts at zero, so a fresh adapter leaves the model's outputs exactly unchanged.

A speech encoder's adapters go where ``SpeechLoRA.placement`` says (``lora_placement``): ``qv``, the attention
query and value projections of every layer (Hu et al.'s choice); ``ffn``, both feed-forward layers of every
layer; ``release``, both feed-forward layers of the layers above half with alpha 1, where the authors' released
models have theirs (``sertool.models.released`` reads those).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sertool.core.config import LORA_PLACEMENTS, ModelConfig

DEFAULT_ALPHA = 16.0  # `lora_alpha` when not given, except for the release placement
RELEASE_ALPHA = 1.0  # loralib's default, which the authors keep: their update is B·A·(1 / rank)
QV, FFN, RELEASE = LORA_PLACEMENTS


@dataclass(frozen=True)
class SpeechLoRA:
    """The LoRA adapters of a frozen speech encoder: their rank, scale numerator and placement."""

    rank: int
    alpha: float
    placement: str

    @classmethod
    def from_config(cls, config: ModelConfig, *, default_placement: str) -> "SpeechLoRA | None":
        """The adapters ``config`` asks of the speech encoder (None: ``lora_rank`` 0), the placement defaulting
        to the backbone's (``default_placement``) and alpha to the placement's (``adapter_alpha``)."""
        if not config.lora_rank:
            return None
        placement = config.lora_placement or default_placement
        return cls(config.lora_rank, adapter_alpha(config.lora_alpha, placement), placement)


def adapter_alpha(alpha: float | None, placement: str) -> float:
    """``lora_alpha`` as given, else the placement's: ``RELEASE_ALPHA`` for ``release``, ``DEFAULT_ALPHA`` for
    the others (the text encoder's adapters are ``qv``)."""
    if alpha is not None:
        return alpha
    return RELEASE_ALPHA if placement == RELEASE else DEFAULT_ALPHA


def release_layers(num_layers: int) -> range:
    """The indices of the layers the authors' LoRA adapts: those above half (``index > num_layers // 2``; 13 to
    23 of WavLM-Large's and 17 to 31 of Whisper-Large's)."""
    return range(num_layers // 2 + 1, num_layers)


def adapt_layers(layers: nn.ModuleList, lora: SpeechLoRA, *, attention: Sequence[str],
                 feed_forward: Sequence[str]) -> int:
    """Wrap the linear layers ``lora.placement`` names in each of an encoder's ``layers``.

    Args:
        layers: the encoder's transformer layers, in order (modified in place).
        lora: rank, alpha and placement.
        attention: the attribute names of a layer's query and value projections (``qv``).
        feed_forward: the attribute names of a layer's two feed-forward linears (``ffn``, ``release``).

    Returns:
        How many linear layers were wrapped.

    Raises:
        ValueError: a placement sertool does not know, or a chosen layer without the named linears.
    """
    if lora.placement not in (QV, FFN, RELEASE):
        raise ValueError(f"unknown LoRA placement {lora.placement!r}")
    targets = attention if lora.placement == QV else feed_forward
    chosen = release_layers(len(layers)) if lora.placement == RELEASE else range(len(layers))
    return sum(apply_lora(layers[index], rank=lora.rank, alpha=lora.alpha, target_modules=targets)
               for index in chosen)


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
