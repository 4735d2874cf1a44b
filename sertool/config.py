"""The typed configuration every command shares.

One ``Config`` holds everything that defines a system. CLI flags and ``--config`` files map onto its
fields; the resolved config is written into each run folder and into every checkpoint, so that a
checkpoint alone says how it was made.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Default model id of each named backbone: a transformers hub id or a local folder may replace it
# through `backbone_path`. `fbank` is sertool's own small encoder, trained from scratch.
DEFAULT_BACKBONE_IDS: dict[str, str | None] = {
    "wavlm": "microsoft/wavlm-large",
    "whisper": "openai/whisper-large-v3",
    "hubert": "facebook/hubert-large-ll60k",
    "wav2vec2": "facebook/wav2vec2-large-robust",
    "fbank": None,
}
DEFAULT_TEXT_MODEL_ID = "FacebookAI/roberta-large"


@dataclass
class DataConfig:
    """Which corpus and how utterances are read."""

    corpus: str | None = None  # MSP-Podcast root, or a sertool manifest (CSV file or folder holding manifest.csv)
    train_split: str = "Train"
    valid_split: str = "Development"
    sample_rate: int = 16_000  # Hz, what the backbones expect
    max_duration_s: float | None = None  # random crop of training clips; evaluation always uses whole utterances


@dataclass
class ModelConfig:
    """The system: speech backbone, optional text branch, pooling, heads and auxiliary tasks."""

    backbone: str = "wavlm"  # one of DEFAULT_BACKBONE_IDS
    backbone_path: str | None = None  # hub id or local folder; None: DEFAULT_BACKBONE_IDS[backbone]
    layer_weighting: str = "weighted"  # "weighted": learnable softmax over all hidden layers; "last"
    freeze_backbone: bool | None = None  # None: the paper's choice (WavLM fine-tuned, Whisper frozen)
    freeze_feature_encoder: bool = True  # the CNN front end of wav2vec2-family models, as the baseline
    lora_rank: int = 0  # >0: LoRA adapters on the frozen Whisper / text encoder attention projections
    lora_alpha: float = 16.0
    text: bool = False  # "MM" systems: concatenate a transcript embedding
    text_model: str = DEFAULT_TEXT_MODEL_ID  # hub id or local folder of a transformers text encoder
    pooling: str = "attentive"  # "attentive" (attention-weighted mean ⊕ std) or "mean"
    head_hidden_dim: int = 1024
    head_dropout: float = 0.5
    aux: tuple[str, ...] = ()  # any of "gender", "speaker"
    aux_weight: float = 0.1  # β: total loss = emotion_weight · CCC loss + aux_weight · aux losses
    emotion_weight: float = 1.0  # α
    aam_margin: float = 0.2  # additive angular margin of the speaker-ID head
    aam_scale: float = 30.0
    speaker_embedding: str | None = None  # hub id or folder of a speaker model (e.g. WavLMForXVector): +S Emb
    fbank_dim: int = 256  # width of the built-in fbank encoder


@dataclass
class Config:
    """Everything that defines a run. ``seed`` makes it reproducible."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (only str, int, float, bool, None, lists, dicts): safe to store anywhere."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        """Inverse of ``to_dict``; unknown keys are an error naming the key."""
        return _build(cls, data, prefix="")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    from sertool.errors import SertoolError

    if not isinstance(data, dict):
        raise SertoolError(f"config section '{prefix or 'top level'}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SertoolError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; known: {', '.join(sorted(fields))}")
    values = {}
    for name, value in data.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            values[name] = _build(type(default), value, prefix=f"{prefix}{name}.")
        elif isinstance(value, list):
            values[name] = tuple(value)
        else:
            values[name] = value
    return cls(**values)
