"""Auxiliary tasks: gender classification and speaker identification with AAM-softmax.

Labels use ``IGNORE_INDEX`` (-100) where unknown; such samples contribute nothing, and a batch where
every label is unknown has loss exactly 0 (not the NaN of a mean over nothing).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sertool.data.records import GENDERS
from sertool.models.heads import hidden_layer, two_layer_mlp

IGNORE_INDEX = -100


def masked_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the samples whose label is not ``IGNORE_INDEX``; 0 when there are none.

    Args:
        logits: ``[B, C]``.
        labels: ``[B]`` class indices or ``IGNORE_INDEX``.
    """
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    count = (labels != IGNORE_INDEX).sum().clamp(min=1)  # a tensor: no host sync
    return total / count


class GenderHead(nn.Module):
    """Two-layer MLP -> logits over ``GENDERS`` (index 0 Male, 1 Female)."""

    def __init__(self, input_dim: int, *, hidden_dim: int, dropout: float, norm: bool = True) -> None:
        super().__init__()
        self.mlp = two_layer_mlp(input_dim, hidden_dim, len(GENDERS), dropout=dropout, norm=norm)

    def forward(self, representation: Tensor) -> Tensor:
        """``[B, input_dim]`` -> ``[B, 2]`` logits."""
        return self.mlp(representation)


class SpeakerHead(nn.Module):
    """Speaker identification: a hidden layer (the speaker embedding) and a cosine classifier.

    Layer 1 is the emotion heads' ``hidden_layer``; layer 2 compares the
    L2-normalised embedding with L2-normalised class weights, giving cosines that ``aam_softmax_loss``
    turns into a loss.
    """

    def __init__(self, input_dim: int, *, num_speakers: int, hidden_dim: int, dropout: float,
                 norm: bool = True) -> None:
        super().__init__()
        if num_speakers <= 0:
            raise ValueError(f"SpeakerHead needs at least one speaker, got {num_speakers}")
        self.embedding = hidden_layer(input_dim, hidden_dim, dropout=dropout, norm=norm)
        self.class_weights = nn.Parameter(torch.empty(num_speakers, hidden_dim))
        nn.init.xavier_uniform_(self.class_weights)

    def forward(self, representation: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, input_dim]`` -> speaker embedding ``[B, hidden_dim]`` and cosines ``[B, num_speakers]``."""
        embedding = self.embedding(representation)
        cosine = F.normalize(embedding, dim=-1) @ F.normalize(self.class_weights, dim=-1).t()
        return embedding, cosine


def aam_logits(cosine: Tensor, labels: Tensor, *, margin: float, scale: float) -> Tensor:
    """Additive angular margin logits (ArcFace): ``s·cos(θ + m)`` for the target class, ``s·cos θ`` else.

    Where ``θ + m`` would pass π, ``cos(θ + m)`` would rise again; there the target logit continues as
    ``s·(cos θ − m·sin m)`` (ArcFace's choice), which keeps the penalty monotonic. Samples labelled
    ``IGNORE_INDEX`` get no margin.

    Args:
        cosine: ``[B, C]`` cosines between embeddings and class weights.
        labels: ``[B]`` class indices or ``IGNORE_INDEX``.
        margin: m in radians.
        scale: s.
    """
    known = labels != IGNORE_INDEX
    index = labels.clamp(min=0).unsqueeze(1)
    target = cosine.gather(1, index)
    # cos(θ + m) = cos θ cos m − sin θ sin m; the floor keeps the square root's gradient finite at |cos| = 1.
    sine = (1 - target.square()).clamp(min=1e-12).sqrt()
    with_margin = target * math.cos(margin) - sine * math.sin(margin)
    with_margin = torch.where(target > math.cos(math.pi - margin), with_margin, target - margin * math.sin(margin))
    target = torch.where(known.unsqueeze(1), with_margin, target)
    return scale * cosine.scatter(1, index, target)


def aam_softmax_loss(cosine: Tensor, labels: Tensor, *, margin: float, scale: float) -> Tensor:
    """Cross-entropy of ``aam_logits`` over the samples with a known speaker; 0 when there are none."""
    return masked_cross_entropy(aam_logits(cosine, labels, margin=margin, scale=scale), labels)
