"""Per-attribute regression heads and the label scale they predict on."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar, cast

import numpy as np
import torch
from torch import Tensor, nn

from sertool.core.constants import attribute_subset
from sertool.data.records import ATTRIBUTES, LABEL_MAX, LABEL_MIN

ArrayT = TypeVar("ArrayT")  # a Tensor, a numpy array or a float: the maps below are plain arithmetic


@dataclass(frozen=True)
class LabelScaling:
    """The linear map between the corpus' rating scale and the unit scale the model is trained on.

    MSP-Podcast ratings lie on 1..7; training targets are ``(y − 1) / 6`` in 0..1 (as the baseline), and
    predictions are mapped back with the inverse. Stored in checkpoints via ``to_dict``.
    """

    minimum: float = LABEL_MIN
    maximum: float = LABEL_MAX

    def to_unit(self, values: ArrayT) -> ArrayT:
        """Ratings -> unit scale."""
        scaled: Any = values  # a float, an array or a Tensor: the same arithmetic keeps the input's type
        return (scaled - self.minimum) / (self.maximum - self.minimum)

    def from_unit(self, values: ArrayT) -> ArrayT:
        """Unit scale -> ratings: the inverse of ``to_unit``, unclipped."""
        scaled: Any = values  # a float, an array or a Tensor: the same arithmetic keeps the input's type
        return scaled * (self.maximum - self.minimum) + self.minimum

    def ratings(self, unit: np.ndarray) -> np.ndarray:
        """What a model predicts: its unit-scale outputs as float64 ratings, clipped to ``[minimum, maximum]``.

        The one place where a model's output becomes a prediction: inference (``CheckpointPredictor``) and
        training's validation (which chooses the floor blend and ``best.pt`` by the CCC of these) both call it,
        so a model is selected on exactly what it will output. Whatever the head (a sigmoid stays inside the
        scale, a linear head and a floor blend need not), every prediction lies on the rating scale. A NaN or
        infinite output stays as it is, for the callers' finiteness checks to refuse (clipping would turn
        infinity into a plausible rating). The training loss never goes through here: clipped values would
        give a linear head no gradient.
        """
        ratings = self.from_unit(np.asarray(unit, dtype=np.float64))
        return np.where(np.isfinite(ratings), ratings.clip(self.minimum, self.maximum), ratings)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LabelScaling":
        return cls(minimum=float(data["minimum"]), maximum=float(data["maximum"]))


def hidden_layer(input_dim: int, hidden_dim: int, *, dropout: float, norm: bool = True) -> nn.Sequential:
    """Dropout → Linear → LayerNorm → ReLU → Dropout: the first layer of every head.

    ``norm=False`` puts an ``nn.Identity`` where the LayerNorm was (the authors' released heads have none),
    so the Linear layers keep their positions (and state-dict names) either way.
    """
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(input_dim, hidden_dim), nn.LayerNorm(hidden_dim) if norm else nn.Identity(),
        nn.ReLU(), nn.Dropout(dropout)
    )


def two_layer_mlp(input_dim: int, hidden_dim: int, output_dim: int, *, dropout: float,
                  norm: bool = True) -> nn.Sequential:
    """``hidden_layer`` → Linear: the challenge baseline's head, shared by the emotion and gender heads."""
    return nn.Sequential(*hidden_layer(input_dim, hidden_dim, dropout=dropout, norm=norm),
                         nn.Linear(hidden_dim, output_dim))


HEAD_OUTPUTS = ("sigmoid", "linear")


class EmotionHeads(nn.Module):
    """One separate two-layer MLP per attribute (the paper), keyed by attribute name.

    ``attributes`` (default: all three) are the attributes the model predicts, in ``ATTRIBUTES`` order
    (``core.constants.attribute_subset``): a system of one attribute has that one head (``train.attributes``).
    The output stacks the heads in that order, so with all three column 0 is arousal, 1 valence, 2 dominance,
    whatever order a checkpoint's dict happens to list them in.

    ``output="sigmoid"`` (default, as the authors' released models) keeps predictions inside the unit
    scale, i.e. inside 1..7. The CCC loss only weakly pulls a prediction's mean towards the labels' while
    the correlation is still near zero, so an unbounded ``"linear"`` head (the challenge baseline's) can
    drift far outside the rating scale early in training.
    """

    def __init__(self, input_dim: int, *, hidden_dim: int, dropout: float, output: str = "sigmoid",
                 norm: bool = True, attributes: Sequence[str] = ATTRIBUTES) -> None:
        super().__init__()
        if output not in HEAD_OUTPUTS:
            raise ValueError(f"head output {output!r} is not one of {', '.join(HEAD_OUTPUTS)}")
        self.output = output
        self.attributes = attribute_subset(attributes)
        self.heads = nn.ModuleDict(
            {name: two_layer_mlp(input_dim, hidden_dim, 1, dropout=dropout, norm=norm) for name in self.attributes}
        )

    def forward(self, representation: Tensor) -> Tensor:
        """``[B, input_dim]`` -> ``[B, len(attributes)]`` in unit scale, in ``attributes`` order (A, V, D), in
        float32 (or the heads' own wider dtype) whatever the autocast.

        The hidden layers run in the autocast dtype; each head's output layer and the sigmoid do not. In bf16
        an output keeps 8 significant bits: sigmoid outputs in steps of 0.002–0.004 (0.012–0.023 on 1..7),
        which the CCC, the loss and the floor blend would all see. Three ``hidden_dim``-wide dot products per
        utterance cost nothing in float32.
        """
        columns = []
        for name in self.attributes:
            head = cast(nn.Sequential, self.heads[name])  # two_layer_mlp: hidden layers, then the output Linear
            hidden = head[:-1](representation)
            output_layer = cast(nn.Linear, head[-1])
            with torch.autocast(representation.device.type, enabled=False):
                columns.append(output_layer(hidden.to(output_layer.weight.dtype)))
        stacked = torch.cat(columns, dim=-1)
        return torch.sigmoid(stacked) if self.output == "sigmoid" else stacked  # autocast never lowers a sigmoid
