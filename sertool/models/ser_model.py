"""The whole system: speech backbone → pooling → [⊕ text] [⊕ speaker embedding] → per-attribute heads.

See docs/models.md for the diagram and which configuration is which system of the paper.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sertool.core.config import ModelConfig
from sertool.core.constants import ATTRIBUTES, attribute_subset
from sertool.core.errors import SertoolError
from sertool.core.hub import CLI_SPELLING, OptionSpelling
from sertool.models.auxiliary import GenderHead, SpeakerHead
from sertool.models.backbones import FbankBackbone, LayerWeighting, build_backbone
from sertool.models.heads import EmotionHeads, LabelScaling
from sertool.models.lora import QV, LoRALinear, adapter_alpha
from sertool.models.pooling import build_pooling
from sertool.models.projection import FrameProjection
from sertool.models.speaker_embedding import build_speaker_embedder
from sertool.models.text import TextEncoder
from sertool.models.utterance_stats import FloorBlend, UtteranceStatistics

AUX_TASKS: tuple[str, ...] = ("gender", "speaker")
# Submodules holding pretrained encoders: their trainable parameters form the "backbone" group.
PRETRAINED_MODULES: tuple[str, ...] = ("backbone", "text_encoder", "speaker_embedder")
# Where the speech backbone's weights come from. "published": loaded from its hub id or folder, so its
# frozen part need not be stored; "stored": built from its config alone, every weight from a stored
# state (a model whose backbone differs from any published one, e.g. the authors' released models).
BACKBONE_WEIGHTS: tuple[str, ...] = ("published", "stored")


@dataclass
class ModelOutput:
    """What ``SERModel.forward`` returns.

    Attributes:
        emotion: ``[B, len(attributes)]`` in unit scale (``LabelScaling.to_unit``), a column per attribute of the
            model (``SERModel.attributes``; all three: A, V, D); float32 under any
            autocast (``EmotionHeads``, ``FloorBlend``), never rounded to half precision.
        gender_logits: ``[B, 2]`` over ``GENDERS``, or None without the gender task.
        speaker_embedding: ``[B, head_hidden_dim]``, or None without the speaker task.
        speaker_cosine: ``[B, num_speakers]`` cosines for ``aam_softmax_loss``, or None.
    """

    emotion: Tensor
    gender_logits: Tensor | None = None
    speaker_embedding: Tensor | None = None
    speaker_cosine: Tensor | None = None


class SERModel(nn.Module):
    """Dimensional speech emotion recognition (arousal, valence, dominance) as in the paper.

    Built from a ``ModelConfig``:

    - ``backbone`` (``backbone_path``, ``layer_weighting``, freezing, LoRA): frame features;
    - ``projection_dim``: a pointwise projection of the frames (the authors' 1×1-conv stack), or none;
    - ``pooling``: ``"attentive"`` (mean ⊕ std, 2·D) or ``"mean"`` (D), over real frames only;
    - ``text``: concatenates the mean-pooled ``text_model`` embedding of the transcript ("MM" systems);
      embeddings come precomputed (``TextEmbeddingCache``) or, with LoRA adapters
      (``ModelConfig.text_adapter_rank``), from ``texts``;
    - ``speaker_embedding``: concatenates a frozen x-vector ("+ S Emb");
    - ``utterance_stats``: concatenates the utterance's standardised log-mel statistics (the wide path);
    - ``floor_blend``: outside training, blends the heads' prediction with the floor's (a fixed ridge on
      those statistics, ``FloorBlend``) at per-attribute weights chosen on the validation split;
    - two-layer heads (``head_hidden_dim``, ``head_dropout``, ``head_norm``), one per attribute the model
      predicts (``attributes``: all three, or those of ``train.attributes``);
    - ``aux``: ``"gender"`` head (cross-entropy) and ``"speaker"`` head (AAM-softmax, needs
      ``num_speakers``).

    Attributes:
        attributes: the attributes the model predicts, in ``ATTRIBUTES`` order: its heads and output columns;
            checkpoints record them (``attributes``).
        label_scaling: how unit-scale outputs map to ratings; store ``label_scaling.to_dict()`` in
            checkpoints.
        representation_dim: width of the concatenated vector the heads read.
        published_modules: the pretrained submodules whose frozen weights are the published ones, and
            are therefore left out of stored states (``sertool.store.checkpoints.stored_state``).
    """

    def __init__(self, config: ModelConfig, *, num_speakers: int = 0, gradient_checkpointing: bool = False,
                 backbone_weights: str = "published", spelling: OptionSpelling = CLI_SPELLING,
                 attributes: Sequence[str] = ATTRIBUTES, pretrained_weights: bool = True) -> None:
        """
        Args:
            config: the model section of the run's config.
            attributes: the attributes to predict (``train.attributes``, or a checkpoint's ``attributes``), in
                any order; the heads and output columns follow ``ATTRIBUTES`` order.
            num_speakers: speaker classes of the training data, for ``aux`` ``"speaker"``.
            gradient_checkpointing: recompute the speech backbone's layers in the backward pass (less
                memory, more compute); see ``build_backbone``.
            backbone_weights: ``"published"`` loads the backbone's pretrained weights; ``"stored"`` builds
                it from its config only (random weights that a stored state must then replace, all of
                them: its frozen part is stored too).
            spelling: how the caller names the pretrained models' locations (``--backbone-path``, or
                ``backbone_path=`` from ``sertool.load``), in the messages when one cannot be loaded.
            pretrained_weights: False builds every pretrained part from its config alone, with random weights,
                whatever ``backbone_weights`` says: a model whose shapes are all that matters (the memory plan of
                ``sertool.training.memory_plan``, which builds it without memory and never predicts with it).

        Raises:
            SertoolError: an unknown ``aux`` task or pooling, ``"speaker"`` without speakers, or a
                model that cannot be loaded.
        """
        super().__init__()
        _check_config(config, num_speakers=num_speakers)
        if backbone_weights not in BACKBONE_WEIGHTS:
            raise ValueError(f"backbone_weights {backbone_weights!r} is not one of {', '.join(BACKBONE_WEIGHTS)}")
        self.config = config
        self.attributes = attribute_subset(attributes)
        self.label_scaling = LabelScaling()
        self.backbone = build_backbone(config, gradient_checkpointing=gradient_checkpointing,
                                       pretrained_weights=pretrained_weights and backbone_weights == "published",
                                       spelling=spelling)
        self.published_modules = tuple(name for name in PRETRAINED_MODULES
                                       if name != "backbone" or backbone_weights == "published")
        self.projection = (FrameProjection(self.backbone.output_dim, config.projection_dim)
                           if config.projection_dim else None)
        frame_dim = self.projection.output_dim if self.projection is not None else self.backbone.output_dim
        self.pooling = build_pooling(config.pooling, frame_dim)
        self.text_encoder = (
            TextEncoder(config.text_model, lora_rank=config.text_adapter_rank(),
                        lora_alpha=adapter_alpha(config.lora_alpha, QV),  # its adapters: attention query/value
                        flag=spelling.name("text_model"), pretrained_weights=pretrained_weights)
            if config.text
            else None
        )
        self.speaker_embedder = (build_speaker_embedder(config.speaker_embedding,
                                                        flag=spelling.name("speaker_embedding"),
                                                        pretrained_weights=pretrained_weights)
                                 if config.speaker_embedding else None)
        # The statistics feed the heads (utterance_stats), the floor (floor_blend), or both.
        self.utterance_stats = (UtteranceStatistics(dropout=config.utterance_stats_dropout)
                                if config.utterance_stats or config.floor_blend else None)
        self.floor_blend = FloorBlend(attributes=self.attributes) if config.floor_blend else None
        self.representation_dim = self.pooling.output_dim + sum(
            part.output_dim for part in (self.text_encoder, self.speaker_embedder,
                                         self.utterance_stats if config.utterance_stats else None)
            if part is not None
        )
        head_sizes: dict[str, Any] = dict(hidden_dim=config.head_hidden_dim, dropout=config.head_dropout,
                                          norm=config.head_norm)
        self.emotion_heads = EmotionHeads(self.representation_dim, output=config.head_output,
                                          attributes=self.attributes, **head_sizes)
        self.gender_head = GenderHead(self.representation_dim, **head_sizes) if "gender" in config.aux else None
        self.speaker_head = (
            SpeakerHead(self.representation_dim, num_speakers=num_speakers, **head_sizes)
            if "speaker" in config.aux
            else None
        )

    @property
    def needs_texts(self) -> bool:
        """True when the text encoder trains (LoRA): forward must get ``texts``, not cached embeddings."""
        return self.text_encoder is not None and self.text_encoder.trainable

    @property
    def backbone_frames_fixed(self) -> bool:
        """Whether the hidden states the speech backbone mixes its frames from (``layer_states``) are a fixed
        function of the audio: a frozen pretrained encoder with nothing training inside it (no LoRA); its
        layer weights may train, they only mix the states. Only then may ``forward`` take precomputed states
        (``sertool.models.frame_features``)."""
        backbone = self.backbone
        return not isinstance(backbone, FbankBackbone) and not any(
            parameter.requires_grad for name, parameter in backbone.named_parameters()
            if not name.startswith("layer_weights."))

    @property
    def reads_audio_beside_frames(self) -> bool:
        """Whether a part besides the backbone reads the waveform (a speaker embedding, utterance
        statistics): a batch of precomputed frames then needs its audio as well."""
        return self.speaker_embedder is not None or self.utterance_stats is not None

    @property
    def may_leave_parameters_unused(self) -> bool:
        """Whether a training step may give some trainable parameter no gradient: the backbone skips layers
        at random (LayerDrop), or an auxiliary head sees a batch without any known gender or speaker label.
        Under DDP such a parameter must be looked for every step (``find_unused_parameters``)."""
        return self.backbone.drops_layers or self.gender_head is not None or self.speaker_head is not None

    def forward(
        self,
        waveforms: Tensor,
        sample_mask: Tensor,
        *,
        frames: Tensor | None = None,
        frame_mask: Tensor | None = None,
        text_embeddings: Tensor | None = None,
        texts: Sequence[str] | None = None,
    ) -> ModelOutput:
        """Predict a batch.

        Args:
            waveforms: ``[B, S]`` 16 kHz, zero-padded on the right (``[B, 0]`` with ``frames``, unless the
                model also reads the audio: a speaker embedding, utterance statistics).
            sample_mask: ``[B, S]`` bool, True on real samples.
            frames: ``[B, T, L × D]`` the backbone's ``layer_states``, precomputed (cached; any float dtype),
                each frame's ``L`` states side by side: the encoder is skipped, its layer weights mix them.
                Only for a backbone whose states are fixed (``backbone_frames_fixed``).
            frame_mask: ``[B, T]`` bool, True on real frames; required with ``frames``.
            text_embeddings: ``[B, E]`` precomputed transcript embeddings (frozen text encoder).
            texts: the B transcripts, embedded here (required with a LoRA text encoder).

        Raises:
            SertoolError: a text model without transcripts.
            ValueError: text inputs that do not fit the model (wrong shape, or embeddings for a model
                whose text encoder trains), or frames given to a backbone that would compute others.
        """
        if frames is None:
            frames, frame_mask = self.backbone(waveforms, sample_mask)
        else:
            frame_mask = self._check_frames(frames, frame_mask)
            states = frames.float().unflatten(-1, (self.backbone.num_layer_states, self.backbone.output_dim))
            frames = self.backbone.mix_layers(states) * frame_mask.unsqueeze(-1)
        if self.projection is not None:
            frames = self.projection(frames)
        pooled = self.pooling(frames, frame_mask)
        parts = [pooled]
        if self.text_encoder is not None:
            parts.append(self._text_part(pooled, text_embeddings=text_embeddings, texts=texts))
        elif text_embeddings is not None or texts is not None:
            raise ValueError("texts given to a model built without a text branch (ModelConfig.text is False)")
        if self.speaker_embedder is not None:
            parts.append(self.speaker_embedder(waveforms, sample_mask).to(pooled.dtype))
        if self.utterance_stats is not None and self.config.utterance_stats:
            parts.append(self.utterance_stats(waveforms, sample_mask).to(pooled.dtype))
        representation = torch.cat(parts, dim=-1)
        emotion = self.emotion_heads(representation)
        if (self.floor_blend is not None and self.floor_blend.in_use and self.utterance_stats is not None
                and not self.training):
            # Training leaves the floor out: the heads learn alone, the blend is chosen on validation.
            emotion = self.floor_blend(emotion, self.utterance_stats.standardised(waveforms, sample_mask))
        output = ModelOutput(emotion=emotion)
        if self.gender_head is not None:
            output.gender_logits = self.gender_head(representation)
        if self.speaker_head is not None:
            output.speaker_embedding, output.speaker_cosine = self.speaker_head(representation)
        return output

    def _check_frames(self, frames: Tensor, frame_mask: Tensor | None) -> Tensor:
        """The mask of precomputed ``frames``, after checking they can stand for the backbone's states."""
        if not self.backbone_frames_fixed:
            raise ValueError("precomputed frames given to a model whose speech encoder trains (fine-tuned, LoRA, or "
                             "trained from scratch): its states change while it trains")
        width = self.backbone.num_layer_states * self.backbone.output_dim
        if frame_mask is None or frames.dim() != 3 or frames.shape[-1] != width \
                or tuple(frame_mask.shape) != tuple(frames.shape[:2]):
            raise ValueError(f"frames of shape {tuple(frames.shape)} with mask "
                             f"{None if frame_mask is None else tuple(frame_mask.shape)}: expected [B, T, {width}] "
                             f"({self.backbone.num_layer_states} states of {self.backbone.output_dim}) and [B, T]")
        return frame_mask

    def _text_part(self, pooled: Tensor, *, text_embeddings: Tensor | None, texts: Sequence[str] | None) -> Tensor:
        assert self.text_encoder is not None
        batch_size = pooled.shape[0]
        if self.needs_texts:
            if texts is None:
                raise ValueError("the text encoder trains (LoRA): pass texts, cached embeddings would be stale")
            embeddings = self.text_encoder.embed(texts)
        elif text_embeddings is not None:
            embeddings = text_embeddings
        elif texts is not None:
            embeddings = self.text_encoder.embed(texts)
        else:
            raise SertoolError(
                "the model was built with --text (an MM system) but got no transcripts: give the corpus "
                "transcripts (or let ASR make them), or train without --text"
            )
        expected = (batch_size, self.text_encoder.output_dim)
        if tuple(embeddings.shape) != expected:
            raise ValueError(f"text embeddings of shape {tuple(embeddings.shape)}, expected {expected}")
        return embeddings.to(device=pooled.device, dtype=pooled.dtype)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split for separate learning rates (``lr_backbone`` / ``lr_lora`` / ``lr_heads``).

        Returns:
            ``{"backbone": [...], "lora": [...], "heads": [...]}``, in that order, each in ``named_parameters``
            order. "backbone": what trains inside pretrained encoders besides adapters (a fine-tuned speech
            backbone). "lora": the LoRA adapters of the frozen speech encoder and of the text encoder. "heads":
            what starts from scratch: the backbone's layer-weighting logits, the whole fbank encoder, the frame
            projection, pooling, emotion and auxiliary heads. Frozen parameters are in none; a group may be
            empty. Before "lora" had a group of its own the adapters were the last of "backbone": concatenated,
            the groups list the parameters in the order they always had (``training.optim`` relies on it).
        """
        from_scratch = [module for module in self.modules() if isinstance(module, (LayerWeighting, FbankBackbone))]
        fresh = {id(parameter) for module in from_scratch for parameter in module.parameters()}
        adapters = {id(parameter) for module in self.modules() if isinstance(module, LoRALinear)
                    for parameter in (module.lora_a, module.lora_b)}
        groups: dict[str, list[nn.Parameter]] = {"backbone": [], "lora": [], "heads": []}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            if id(parameter) in adapters:
                groups["lora"].append(parameter)
            elif name.split(".", 1)[0] in PRETRAINED_MODULES and id(parameter) not in fresh:
                groups["backbone"].append(parameter)
            else:
                groups["heads"].append(parameter)
        return groups


def _check_config(config: ModelConfig, *, num_speakers: int) -> None:
    unknown = [task for task in config.aux if task not in AUX_TASKS]
    if unknown:
        raise SertoolError(f"--aux {', '.join(unknown)}: unknown auxiliary task; choose from {', '.join(AUX_TASKS)}")
    if config.projection_dim < 0:
        raise SertoolError(f"--projection-dim {config.projection_dim}: give a width, or 0 for no projection")
    if "speaker" in config.aux and num_speakers <= 0:
        raise SertoolError(
            "--aux speaker needs speaker labels, but the training data has no known speaker; "
            "drop 'speaker' from --aux or use a corpus with speaker ids"
        )
