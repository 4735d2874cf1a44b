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
from sertool.core.hub import CLI_SPELLING, OptionSpelling, spelled
from sertool.models.backbones.base import LAYER_WEIGHTINGS, LayerWeighting, SpeechBackbone
from sertool.models.backbones.fbank import FbankBackbone
from sertool.models.backbones.wav2vec2 import Wav2Vec2FamilyBackbone, load_wav2vec2_family, normalize_per_utterance
from sertool.models.backbones.whisper import WhisperBackbone, load_whisper
from sertool.models.lora import FFN, QV, SpeechLoRA

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
# Where a frozen encoder's LoRA adapters go when `lora_placement` is None: what sertool has always done, so that
# a checkpoint from before the option rebuilds the model it trained. Whisper: the attention's query and value,
# Hu et al.'s choice; the wav2vec2 family: the feed-forward layers, the only pair WavLM's attention lets LoRA
# wrap (sertool.models.backbones.wav2vec2), on every layer. The authors' own placement is `release`.
DEFAULT_LORA_PLACEMENTS = {"wavlm": FFN, "hubert": FFN, "wav2vec2": FFN, "whisper": QV}


def build_backbone(config: ModelConfig, *, gradient_checkpointing: bool = False, pretrained_weights: bool = True,
                   spelling: OptionSpelling = CLI_SPELLING) -> SpeechBackbone:
    """The speech backbone ``config`` names, with pretrained weights loaded and freezing applied.

    Args:
        config: reads ``backbone``, ``backbone_path``, ``layer_weighting``, ``freeze_backbone``,
            ``freeze_feature_encoder``, ``lora_rank``, ``lora_placement``, ``lora_alpha``, ``whisper_window_s``
            and ``fbank_dim``. ``lora_rank`` adapts a frozen pretrained encoder where ``lora_placement`` says
            (default: ``DEFAULT_LORA_PLACEMENTS``); on an encoder that trains anyway it is refused, unless
            ``text`` without ``text_lora_rank`` gives it to the text encoder (``_speech_lora``).
        gradient_checkpointing: recompute transformer layers in the backward pass, trading ~30 % more
            compute for much less activation memory (pretrained backbones; fbank ignores it).
        pretrained_weights: load the pretrained weights; False reads only the model's config (and
            feature extractor settings) from ``backbone_path`` and leaves random weights for a stored
            state to replace.
        spelling: how the caller names ``backbone_path`` in messages about the model there
            (``--backbone-path``, or ``backbone_path=`` from ``sertool.load``).

    Returns:
        A ``SpeechBackbone`` in training mode; frozen encoders inside it stay in eval mode.

    Raises:
        SertoolError: an unknown backbone or layer weighting, an impossible combination (a frozen fbank
            encoder, LoRA on a fine-tuned Whisper, LoRA with nothing frozen to adapt, a model path for
            fbank), or a model that cannot be
            loaded (e.g. a hub id on an offline machine: the message says to pass a local folder with
            ``backbone_path`` as the caller spells it).
    """
    name = config.backbone
    if name not in DEFAULT_BACKBONE_IDS:
        raise SertoolError(f"--backbone {name!r}: unknown; choose one of {', '.join(DEFAULT_BACKBONE_IDS)}")
    if config.layer_weighting not in LAYER_WEIGHTINGS:
        raise SertoolError(f"--layer-weighting {config.layer_weighting!r}: choose one of {', '.join(LAYER_WEIGHTINGS)}")
    frozen = FROZEN_BY_DEFAULT[name] if config.freeze_backbone is None else config.freeze_backbone
    if config.whisper_window_s and name != "whisper":
        raise SertoolError(f"--whisper-window-s {config.whisper_window_s:g}: applies to --backbone whisper only")
    if name == "fbank" and frozen:
        raise SertoolError("--freeze-backbone: the fbank backbone is trained from scratch and cannot be frozen")
    lora = _speech_lora(config, frozen=frozen)
    option = spelling.name("backbone_path")
    if name == "fbank":
        if config.backbone_path is not None:
            raise SertoolError(f"{spelled(option, config.backbone_path)}: the fbank backbone has no pretrained model")
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
            lora=lora,
            window_s=config.whisper_window_s,
            gradient_checkpointing=gradient_checkpointing,
            pretrained_weights=pretrained_weights,
            option=option,
        )
    return load_wav2vec2_family(
        name_or_path,
        layer_weighting=config.layer_weighting,
        frozen=frozen,
        freeze_feature_encoder=config.freeze_feature_encoder,
        lora=lora,
        gradient_checkpointing=gradient_checkpointing,
        pretrained_weights=pretrained_weights,
        option=option,
    )


def _speech_lora(config: ModelConfig, *, frozen: bool) -> SpeechLoRA | None:
    """The speech encoder's LoRA adapters: ``lora_rank``'s on a frozen pretrained encoder, else none.

    On an encoder that trains anyway (fine-tuned, or fbank) ``lora_rank`` alone with ``text`` is the text
    encoder's rank (``ModelConfig.text_adapter_rank``), as it has always been; anything else would adapt
    nothing and is refused.

    Raises:
        SertoolError: ``lora_rank`` on an encoder that trains anyway, without ``text``, or beside
            ``text_lora_rank``; ``lora_placement`` where no speech adapter goes.
    """
    name = config.backbone
    if not config.lora_rank:
        return None
    if frozen:
        return SpeechLoRA.from_config(config, default_placement=DEFAULT_LORA_PLACEMENTS[name])
    trains = "trains from scratch" if name == "fbank" else "is fine-tuned"
    hint = "" if name == "fbank" else "add --freeze-backbone (LoRA on the frozen encoder), "
    if not config.text:
        raise SertoolError(f"--lora-rank {config.lora_rank}: LoRA adapts frozen encoders, and there is none: "
                           f"--backbone {name} {trains} and there is no text encoder (--text); {hint}add --text, "
                           "or drop --lora-rank")
    if config.text_lora_rank is not None:
        raise SertoolError(f"--lora-rank {config.lora_rank}: LoRA adapts a frozen speech encoder, and --backbone "
                           f"{name} {trains}; {hint}or drop --lora-rank (--text-lora-rank {config.text_lora_rank} is "
                           "the text encoder's)")
    if config.lora_placement is not None:
        raise SertoolError(f"--lora-placement {config.lora_placement}: places the speech encoder's adapters, and "
                           f"--backbone {name} {trains} (--lora-rank {config.lora_rank} goes to the text encoder "
                           f"only); {hint}or drop --lora-placement")
    return None
