"""The training objective: α · Σ_attributes (1 − CCC) + β · (gender CE + speaker AAM-softmax)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sertool.core.config import ModelConfig
from sertool.core.constants import attribute_subset
from sertool.data.records import ATTRIBUTES
from sertool.models.auxiliary import aam_softmax_loss, masked_cross_entropy
from sertool.models.ccc import ccc_loss
from sertool.models.ser_model import ModelOutput


class SERLoss:
    """The paper's multi-task loss, weighted by ``ModelConfig.emotion_weight`` (α, default 1) and
    ``aux_weight`` (β, default 0.1); AAM margin and scale from ``aam_margin`` / ``aam_scale``.

    The CCC part is a statistic of the batch it is given: with gradient accumulation it is the CCC of
    each micro-batch, not of the accumulated batch (see docs/models.md). It sums over ``attributes``, those the
    model predicts (``train.attributes``; default all three): the other attributes' labels take no part.
    """

    def __init__(self, config: ModelConfig, *, attributes: Sequence[str] = ATTRIBUTES) -> None:
        self.attributes = attribute_subset(attributes)
        self.columns = [ATTRIBUTES.index(name) for name in self.attributes]  # of the targets' A, V, D
        self.emotion_weight = config.emotion_weight
        self.aux_weight = config.aux_weight
        self.aam_margin = config.aam_margin
        self.aam_scale = config.aam_scale

    def __call__(
        self,
        output: ModelOutput,
        emotion_targets: Tensor,
        *,
        gender_ids: Tensor | None = None,
        speaker_ids: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and its parts.

        Args:
            output: the model's output for the batch.
            emotion_targets: ``[B, 3]`` in unit scale, A, V, D (every attribute's: the loss takes the columns of
                the model's attributes, the columns of ``output.emotion``).
            gender_ids: ``[B]`` indices into ``GENDERS``, -100 where unknown; needed with a gender head.
            speaker_ids: ``[B]`` speaker classes, -100 where unknown; needed with a speaker head.

        Returns:
            The differentiable total, and for logging, detached float32 scalars on the outputs' device:
            ``ccc_<attribute>`` (the batch CCC, of each of the model's attributes), ``emotion`` (Σ 1 − CCC),
            ``gender`` / ``speaker`` where those
            heads exist, and ``total``. Reading one on the host waits for the GPU, so the training loop
            reads them once per optimiser step, not once per micro-batch.

        Raises:
            ValueError: targets of the wrong shape, or a head's labels missing.
        """
        expected = (output.emotion.shape[0], len(ATTRIBUTES))
        if tuple(emotion_targets.shape) != expected or output.emotion.shape[1:] != (len(self.attributes),):
            raise ValueError(f"emotion targets {tuple(emotion_targets.shape)} (expected {expected}) for predictions "
                             f"{tuple(output.emotion.shape)} of {', '.join(self.attributes)}")
        targets = emotion_targets[:, self.columns]
        # CCC in float32 even under autocast: its sums of squares lose too much in half precision.
        per_attribute_loss = ccc_loss(output.emotion.float(), targets.float(), dim=0)
        per_attribute = 1 - per_attribute_loss.detach()
        emotion = per_attribute_loss.sum()
        parts: dict[str, Tensor] = {f"ccc_{name}": per_attribute[i] for i, name in enumerate(self.attributes)}
        parts["emotion"] = emotion
        auxiliary = []
        if output.gender_logits is not None:
            if gender_ids is None:
                raise ValueError("the model has a gender head: pass gender_ids (-100 where unknown)")
            parts["gender"] = masked_cross_entropy(output.gender_logits.float(), gender_ids)
            auxiliary.append(parts["gender"])
        if output.speaker_cosine is not None:
            if speaker_ids is None:
                raise ValueError("the model has a speaker head: pass speaker_ids (-100 where unknown)")
            parts["speaker"] = aam_softmax_loss(
                output.speaker_cosine.float(), speaker_ids, margin=self.aam_margin, scale=self.aam_scale
            )
            auxiliary.append(parts["speaker"])
        total = self.emotion_weight * emotion
        if auxiliary:
            total = total + self.aux_weight * torch.stack(auxiliary).sum()
        parts["total"] = total
        return total, {name: part.detach().float() for name, part in parts.items()}
