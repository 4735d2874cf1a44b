"""WavLM, HuBERT, wav2vec2 and any transformers speech encoder of that family, through one code path.

The family: a CNN front end turns raw samples into ~20 ms frames, a transformer encodes them. What makes
padded batches equal one-at-a-time inference here:

- input normalisation (zero mean, unit variance per utterance) uses the real samples only, as the
  model's feature extractor does when it pads with an attention mask;
- the attention mask is passed in, and the frame mask comes from the model's own length arithmetic
  (``_get_feat_extract_output_lengths``).

This holds for layer-norm front ends (``feat_extract_norm="layer"``: WavLM-Large, HuBERT-Large,
wav2vec2-Large). Group-norm front ends (``"group"``: the base-size models) normalise each CNN channel over
the whole padded length, so the padding changes the features of the real frames; for those, batch
utterances of similar length or run one at a time where exactness matters.
"""
from __future__ import annotations

import math
import types
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sertool.core.constants import SAMPLE_RATE
from sertool.core.errors import SertoolError
from sertool.core.hub import CLI_SPELLING, load_pretrained, spelled
from sertool.guards.third_party import without_warning
from sertool.models.backbones.base import (
    SpeechBackbone,
    grad_context,
    lengths_to_mask,
    make_layer_weighting,
    pad_to_min_length,
    stack_layers,
)
from sertool.models.lora import QV, SpeechLoRA, adapt_layers

# The linear layers of an encoder layer that LoRA may wrap (``sertool.models.lora.adapt_layers``): the attention's
# query and value projections (placement qv), the feed-forward pair (ffn, release; the authors' release adapts it).
LORA_ATTENTION = ("q_proj", "v_proj")
LORA_FEED_FORWARD = ("intermediate_dense", "output_dense")
# Model types whose attention passes its projections' weights to torch's multi_head_attention_forward instead of
# calling them: a wrapped q_proj / v_proj would never run its adapter.
_ATTENTION_NOT_WRAPPABLE = ("wavlm",)
NORMALIZATION_EPS = 1e-7  # the variance floor of transformers' Wav2Vec2FeatureExtractor
_MAX_RECEPTIVE_FIELD_SAMPLES = 16_000  # search bound for the shortest input that yields one frame
# transformers' WavLM attention gives torch's multi_head_attention_forward a boolean padding mask beside its
# float position bias, and torch warns about the mismatch at every run: nothing a user can change.
MASK_TYPES_WARNING = "Support for mismatched key_padding_mask and attn_mask is deprecated"


class Wav2Vec2FamilyBackbone(SpeechBackbone):
    """A transformers wav2vec2-family encoder (WavLM, HuBERT, wav2vec2, data2vec-audio, ...).

    Args:
        model: the loaded encoder (e.g. ``WavLMModel``), taking ``input_values`` and ``attention_mask``.
        normalize_input: normalise each utterance to zero mean, unit variance over its real samples.
        layer_weighting: ``"weighted"`` (softmax-weighted sum of all hidden states; turns off the model's
            LayerDrop) or ``"last"``.
        frozen: freeze the whole encoder (kept in eval mode, run without gradients); layer weights, if
            any, still train.
        freeze_feature_encoder: freeze only the CNN front end (the challenge baseline's setting).
        lora: LoRA adapters for a frozen encoder (rank, alpha, placement: ``LORA_ATTENTION`` or
            ``LORA_FEED_FORWARD``); None: none. Refused for a fine-tuned encoder, and ``qv`` for WavLM.
        gradient_checkpointing: recompute transformer layers in the backward pass to save memory.
    """

    def __init__(
        self,
        model: Any,  # duck-typed: any transformers model of the family (config, feature_extractor, lengths)
        *,
        normalize_input: bool,
        layer_weighting: str,
        frozen: bool,
        freeze_feature_encoder: bool,
        lora: SpeechLoRA | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.normalize_input = normalize_input
        self.output_dim = int(model.config.hidden_size)
        self.layer_weights = make_layer_weighting(layer_weighting, model.config.num_hidden_layers + 1)
        if self.layer_weights is not None and getattr(model.config, "layerdrop", 0.0) > 0.0:
            # transformers returns no hidden state for a layer that LayerDrop skips, which would shift every
            # later state onto another layer's weight: the weighted sum needs every layer, every step.
            model.config.layerdrop = 0.0
        self.min_samples = _min_samples_for_one_frame(model)
        self.frame_rate = SAMPLE_RATE / math.prod(model.config.conv_stride)  # 50: one frame per 320 samples
        _quiet_attention_masks(model)
        if frozen:
            model.requires_grad_(False)
            self._eval_only.append("model")
            if lora is not None:
                _adapt(model, lora)
        elif lora is not None:
            raise SertoolError(f"--lora-rank {lora.rank} adapts a frozen encoder; this {model.config.model_type} is "
                               "fine-tuned: add --freeze-backbone, or drop --lora-rank")
        elif freeze_feature_encoder:
            _freeze_cnn(model.feature_extractor)
        if gradient_checkpointing:
            # transformers renamed the method in 5.x; the old name warns and goes in v6
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable({"use_reentrant": False})
        self.train(self.training)

    @property
    def drops_layers(self) -> bool:
        """See ``SpeechBackbone.drops_layers``: the model's LayerDrop (0.1 in the Large configs), kept with
        ``layer_weighting="last"``; a frozen encoder stays in eval mode, where nothing is skipped."""
        return getattr(self.model.config, "layerdrop", 0.0) > 0.0 and "model" not in self._eval_only

    @property
    def padding_invariant(self) -> bool:
        """See ``SpeechBackbone.padding_invariant``: layer-norm front ends only (the module's docstring)."""
        return getattr(self.model.config, "feat_extract_norm", "group") == "layer"

    def frame_count(self, num_samples: int) -> int:
        """See ``SpeechBackbone.frame_count``: the model's own length arithmetic (at least one frame)."""
        return int(self.model._get_feat_extract_output_lengths(torch.tensor(max(num_samples, self.min_samples))))

    def front_end_settings(self) -> dict[str, object]:
        """See ``SpeechBackbone.front_end_settings``; ``layer``: the last state alone, or every state
        (``weighted``)."""
        import transformers

        major = transformers.__version__.split(".")[0]
        return {"model_type": str(self.model.config.model_type), "sample_rate": SAMPLE_RATE,
                "normalize_input": self.normalize_input, "min_samples": self.min_samples,
                "layer": "last" if self.layer_weights is None else "weighted",
                # Which tensors hidden_states holds changed with transformers 5 (the last before its norm).
                "states": f"hidden_states[:-1] + last_hidden_state, transformers {major}"}

    def layer_states(self, waveforms: Tensor, sample_mask: Tensor) -> tuple[Tensor, Tensor]:
        """See ``SpeechBackbone.layer_states``: the CNN's projected features and every transformer layer's
        output (the last as ``last_hidden_state``), or that last one alone. An utterance shorter than the
        CNN's receptive field (400 samples for the usual front end) is zero-padded to it and yields one frame."""
        sample_lengths = sample_mask.sum(dim=-1)
        waveforms = waveforms * sample_mask  # padding must be exact zeros
        if self.normalize_input:
            waveforms = normalize_per_utterance(waveforms, sample_mask)
        waveforms = pad_to_min_length(waveforms, self.min_samples)
        input_lengths = sample_lengths.clamp(min=self.min_samples)
        attention_mask = lengths_to_mask(input_lengths, waveforms.shape[-1])
        with grad_context(self.model):
            outputs = self.model(
                input_values=waveforms,
                attention_mask=attention_mask.long(),
                output_hidden_states=self.layer_weights is not None,
            )
        # The last state is the encoder's output, after its final layer norm in the Large models, as
        # transformers 4.x returned it (the authors' released models were trained so); transformers
        # 5.x returns the last layer's output before that norm instead.
        states = [outputs.last_hidden_state]
        if self.layer_weights is not None:
            states = [*outputs.hidden_states[:-1], *states]
        frame_lengths = self.model._get_feat_extract_output_lengths(input_lengths)
        frame_mask = lengths_to_mask(frame_lengths, states[0].shape[1])
        return stack_layers(states), frame_mask


def normalize_per_utterance(waveforms: Tensor, sample_mask: Tensor) -> Tensor:
    """Zero mean, unit variance per row over its real samples; padding stays zero.

    Matches transformers' ``Wav2Vec2FeatureExtractor`` (``do_normalize=True`` with an attention mask):
    population variance, ``sqrt(var + 1e-7)``.
    """
    mask = sample_mask.to(waveforms.dtype)
    count = mask.sum(dim=-1, keepdim=True).clamp(min=1.0)
    mean = (waveforms * mask).sum(dim=-1, keepdim=True) / count
    variance = ((waveforms - mean) ** 2 * mask).sum(dim=-1, keepdim=True) / count
    return (waveforms - mean) / torch.sqrt(variance + NORMALIZATION_EPS) * mask


def load_wav2vec2_family(
    name_or_path: str,
    *,
    layer_weighting: str,
    frozen: bool,
    freeze_feature_encoder: bool,
    lora: SpeechLoRA | None = None,
    gradient_checkpointing: bool = False,
    pretrained_weights: bool = True,
    option: str = CLI_SPELLING.name("backbone_path"),
) -> Wav2Vec2FamilyBackbone:
    """Load a wav2vec2-family encoder from a hub id or local folder (float32 weights).

    Whether inputs are normalised follows the model's feature extractor (``do_normalize`` in
    ``preprocessor_config.json``); without one, layer-norm front ends are normalised (the Large models
    were trained that way) and group-norm ones are not. With ``pretrained_weights=False`` only the
    config and the feature extractor are read and the weights are random, for a stored state to replace.
    ``option`` is how the caller names the model's location (``--backbone-path``, or ``backbone_path=`` in
    Python: ``sertool.core.hub.OptionSpelling``), for the messages.

    Raises:
        SertoolError: the model cannot be loaded, or it is not a raw-waveform encoder of this family
            (naming ``option``).
    """
    from transformers import AutoConfig, AutoModel

    where = spelled(option, name_or_path)
    config = load_pretrained(AutoConfig.from_pretrained, name_or_path, flag=option)
    if config.model_type == "whisper":
        raise SertoolError(f"{where}: a Whisper model; this backbone needs a wav2vec2-family encoder (WavLM, "
                           "HuBERT, wav2vec2, ...), and a Whisper model the whisper backbone")
    if pretrained_weights:
        model = load_pretrained(AutoModel.from_pretrained, name_or_path, flag=option, config=config,
                                dtype=torch.float32)
    else:
        model = AutoModel.from_config(config, dtype=torch.float32)
    takes_waveforms = getattr(model, "main_input_name", None) == "input_values"
    if not takes_waveforms or not hasattr(model, "_get_feat_extract_output_lengths"):
        raise SertoolError(
            f"{where}: a {config.model_type} model, not a raw-waveform speech encoder "
            "of the wav2vec2 family (WavLM, HuBERT, wav2vec2, ...)"
        )
    return Wav2Vec2FamilyBackbone(
        model,
        normalize_input=_feature_extractor_normalizes(name_or_path, config, option=option),
        layer_weighting=layer_weighting,
        frozen=frozen,
        freeze_feature_encoder=freeze_feature_encoder,
        lora=lora,
        gradient_checkpointing=gradient_checkpointing,
    )


def _feature_extractor_normalizes(name_or_path: str, config: Any, *, option: str) -> bool:
    from transformers import AutoFeatureExtractor

    folder = Path(name_or_path).expanduser()
    has_extractor = (folder / "preprocessor_config.json").is_file() if folder.exists() else True
    if has_extractor:
        try:
            extractor = load_pretrained(AutoFeatureExtractor.from_pretrained, name_or_path, flag=option)
            return bool(extractor.do_normalize)
        except (SertoolError, AttributeError):
            pass  # a hub model without a usable feature extractor: decide from its config below
    return getattr(config, "feat_extract_norm", "group") == "layer"


def _adapt(model: Any, lora: SpeechLoRA) -> None:
    """LoRA adapters on the encoder's layers where ``lora.placement`` puts them.

    Raises:
        SertoolError: ``qv`` on a model whose attention cannot be wrapped (WavLM).
    """
    model_type = model.config.model_type
    if lora.placement == QV and model_type in _ATTENTION_NOT_WRAPPABLE:
        raise SertoolError(f"--lora-placement {QV}: {model_type}'s attention passes its query and value weights to "
                           "torch directly, so adapters there would never run; use --lora-placement ffn (every "
                           "layer's feed-forward) or release (the authors')")
    adapt_layers(model.encoder.layers, lora, attention=LORA_ATTENTION, feed_forward=LORA_FEED_FORWARD)


def _quiet_attention_masks(model: nn.Module) -> None:
    """Each WavLM attention layer of ``model`` runs without torch's ``MASK_TYPES_WARNING``. On the layer, not
    around the backbone's forward: with gradient checkpointing the layers run again in the backward pass."""
    for module in model.modules():
        if hasattr(type(module), "torch_multi_head_self_attention"):  # WavLM's; others have no such method
            vars(module)["torch_multi_head_self_attention"] = types.MethodType(_attention_without_mask_warning,
                                                                               module)


def _attention_without_mask_warning(self: Any, *args: Any, **kwargs: Any) -> Any:  # a WavLMAttention
    """transformers' ``WavLMAttention.torch_multi_head_self_attention``, without ``MASK_TYPES_WARNING``."""
    with without_warning(MASK_TYPES_WARNING, UserWarning):
        return type(self).torch_multi_head_self_attention(self, *args, **kwargs)


def _freeze_cnn(feature_encoder: nn.Module) -> None:
    """Freeze the CNN front end the way transformers does (``freeze_feature_encoder``, which HuBERT
    lacks): its ``_freeze_parameters`` also stops it from forcing gradients onto its output, which would
    keep the CNN's activations alive for nothing."""
    freeze = getattr(feature_encoder, "_freeze_parameters", None)
    if freeze is not None:
        freeze()
    else:
        feature_encoder.requires_grad_(False)


def _min_samples_for_one_frame(model: Any) -> int:
    """The shortest input (in samples) for which the model's own length arithmetic gives one frame."""
    candidates = torch.arange(1, _MAX_RECEPTIVE_FIELD_SAMPLES + 1)
    produces_frame = model._get_feat_extract_output_lengths(candidates) >= 1
    if not produces_frame.any():
        raise ValueError(f"{type(model).__name__} gives no frame for inputs of {_MAX_RECEPTIVE_FIELD_SAMPLES} samples")
    return int(candidates[produces_frame][0])
