"""Speech backbones: waveforms in, frame features out.

``build_backbone(config)`` turns a ``ModelConfig`` into a ``SpeechBackbone``:

========== ================================= ============================ ==========================
backbone   default model                     frozen by default            frames
========== ================================= ============================ ==========================
wavlm      microsoft/wavlm-large             no (CNN front end frozen)    20 ms, 1024-d
hubert     facebook/hubert-large-ll60k       no (CNN front end frozen)    20 ms, 1024-d
wav2vec2   facebook/wav2vec2-large-robust    no (CNN front end frozen)    20 ms, 1024-d
whisper    openai/whisper-large-v3 encoder   yes                          20 ms, 1280-d
fbank      sertool's own, from scratch       never                        40 ms, ``fbank_dim``
========== ================================= ============================ ==========================

See docs/backbones.md for input normalisation, layer weighting, Whisper's real-length path and memory.
"""
from __future__ import annotations

from sertool.core.config import DEFAULT_BACKBONE_IDS, ModelConfig
from sertool.core.errors import SertoolError
from sertool.models.backbones.base import LAYER_WEIGHTINGS, LayerWeighting, SpeechBackbone
from sertool.models.backbones.fbank import FbankBackbone
from sertool.models.backbones.wav2vec2 import Wav2Vec2FamilyBackbone, load_wav2vec2_family, normalize_per_utterance
from sertool.models.backbones.whisper import WhisperBackbone, load_whisper

__all__ = [
    "FROZEN_BY_DEFAULT",
    "LAYER_WEIGHTINGS",
    "FbankBackbone",
    "LayerWeighting",
    "SpeechBackbone",
    "Wav2Vec2FamilyBackbone",
    "WhisperBackbone",
    "build_backbone",
    "normalize_per_utterance",
]

# The paper's choice when `freeze_backbone` is None: WavLM (and its siblings) fine-tuned, Whisper frozen.
FROZEN_BY_DEFAULT = {"wavlm": False, "hubert": False, "wav2vec2": False, "whisper": True, "fbank": False}


def build_backbone(config: ModelConfig, *, gradient_checkpointing: bool = False,
                   pretrained_weights: bool = True) -> SpeechBackbone:
    """The speech backbone ``config`` names, with pretrained weights loaded and freezing applied.

    Args:
        config: reads ``backbone``, ``backbone_path``, ``layer_weighting``, ``freeze_backbone``,
            ``freeze_feature_encoder``, ``lora_rank``, ``lora_alpha``, ``whisper_window_s`` and
            ``fbank_dim``. ``lora_rank`` adapts a frozen pretrained encoder (Whisper's attention, a
            wav2vec2-family model's feed-forward layers) and the text encoder (``text``); with neither
            it is refused rather than ignored.
        gradient_checkpointing: recompute transformer layers in the backward pass, trading ~30 % more
            compute for much less activation memory (pretrained backbones; fbank ignores it).
        pretrained_weights: load the pretrained weights; False reads only the model's config (and
            feature extractor settings) from ``backbone_path`` and leaves random weights for a stored
            state to replace.

    Returns:
        A ``SpeechBackbone`` in training mode; frozen encoders inside it stay in eval mode.

    Raises:
        SertoolError: an unknown backbone or layer weighting, an impossible combination (a frozen fbank
            encoder, LoRA on a fine-tuned Whisper, LoRA with nothing frozen to adapt, a model path for
            fbank), or a model that cannot be
            loaded (e.g. a hub id on an offline machine: the message says to pass a local folder with
            ``--backbone-path``).
    """
    name = config.backbone
    if name not in DEFAULT_BACKBONE_IDS:
        raise SertoolError(f"--backbone {name!r}: unknown; choose one of {', '.join(DEFAULT_BACKBONE_IDS)}")
    if config.layer_weighting not in LAYER_WEIGHTINGS:
        raise SertoolError(f"--layer-weighting {config.layer_weighting!r}: choose one of {', '.join(LAYER_WEIGHTINGS)}")
    frozen = FROZEN_BY_DEFAULT[name] if config.freeze_backbone is None else config.freeze_backbone
    if config.whisper_window_s and name != "whisper":
        raise SertoolError(f"--whisper-window-s {config.whisper_window_s:g}: applies to --backbone whisper only")
    if config.lora_rank and not frozen and not config.text:
        trains = "trains from scratch" if name == "fbank" else "is fine-tuned"
        hint = "" if name == "fbank" else "add --freeze-backbone (LoRA on the frozen encoder), "
        raise SertoolError(f"--lora-rank {config.lora_rank}: LoRA adapts frozen encoders, and there is none: "
                           f"--backbone {name} {trains} and there is no text encoder (--text); {hint}add --text, "
                           "or drop --lora-rank")
    if name == "fbank":
        if frozen:
            raise SertoolError("--freeze-backbone: the fbank backbone is trained from scratch and cannot be frozen")
        if config.backbone_path is not None:
            raise SertoolError(f"--backbone-path {config.backbone_path}: the fbank backbone has no pretrained model")
        return FbankBackbone(config.fbank_dim, layer_weighting=config.layer_weighting, spec_augment=config.spec_augment)
    if config.spec_augment:
        raise SertoolError(f"--spec-augment masks the fbank encoder's log-mel input; the {name} backbone has none "
                           "(drop the flag)")
    name_or_path = config.backbone_path or DEFAULT_BACKBONE_IDS[name]
    assert name_or_path is not None  # every pretrained backbone has a default id
    if name == "whisper":
        return load_whisper(
            name_or_path,
            layer_weighting=config.layer_weighting,
            frozen=frozen,
            freeze_feature_encoder=config.freeze_feature_encoder,
            lora_rank=config.lora_rank,
            lora_alpha=config.lora_alpha,
            window_s=config.whisper_window_s,
            gradient_checkpointing=gradient_checkpointing,
            pretrained_weights=pretrained_weights,
        )
    return load_wav2vec2_family(
        name_or_path,
        layer_weighting=config.layer_weighting,
        frozen=frozen,
        freeze_feature_encoder=config.freeze_feature_encoder,
        lora_rank=config.lora_rank if frozen else 0,  # a fine-tuned encoder with --text: LoRA on the text only
        lora_alpha=config.lora_alpha,
        gradient_checkpointing=gradient_checkpointing,
        pretrained_weights=pretrained_weights,
    )
