"""Tiny random speech models saved to a folder, for tests that must not touch the model hub.

Each builder writes what ``from_pretrained`` reads — ``config.json``, random weights and a feature
extractor's ``preprocessor_config.json`` — and returns the folder. The wav2vec2-family models use the
Large models' layer-norm front end (``feat_extract_norm="layer"``, ``do_stable_layer_norm=True``), for
which a padded batch equals one-at-a-time inference, and keep the real models' CNN kernels and strides
(400-sample receptive field, 320-sample hop) so length arithmetic is realistic. Seeds are fixed: the same
call writes the same weights, and the global random state is left untouched.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

HIDDEN_SIZE = 64
NUM_LAYERS = 2
NUM_HEADS = 4
CONV_DIM = (32,) * 7  # the real models' 7 CNN layers, 16x narrower channels

# Shared by every wav2vec2-family tiny model: small, but the Large models' architecture switches.
_WAV2VEC2_FAMILY_SIZES: dict[str, Any] = dict(
    hidden_size=HIDDEN_SIZE,
    num_hidden_layers=NUM_LAYERS,
    num_attention_heads=NUM_HEADS,
    intermediate_size=2 * HIDDEN_SIZE,
    conv_dim=CONV_DIM,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    feat_extract_norm="layer",
    do_stable_layer_norm=True,
)


def _save(model_class: type, config: Any, feature_extractor: Any, folder: str | Path, *, seed: int) -> Path:
    """Write ``model_class(config)`` with weights drawn from ``seed`` (leaving the global random state as it
    was) and ``feature_extractor`` to ``folder``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    feature_extractor.save_pretrained(folder)
    return folder


def _wav2vec2_feature_extractor(*, do_normalize: bool) -> Any:
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=do_normalize, return_attention_mask=True
    )


def save_tiny_wavlm(
    folder: str | Path, *, seed: int = 0, do_normalize: bool = True, **config_overrides: Any
) -> Path:
    """Write a tiny random ``WavLMModel`` (2 layers, hidden 64, 4 heads) and its feature extractor.

    Args:
        folder: where to write; created if missing.
        seed: torch seed for the random weights.
        do_normalize: the feature extractor's per-utterance input normalisation flag.
        config_overrides: ``WavLMConfig`` fields that replace the tiny defaults.

    Returns:
        ``folder`` as a ``Path``.
    """
    from transformers import WavLMConfig, WavLMModel

    config = WavLMConfig(**{**_WAV2VEC2_FAMILY_SIZES, "num_buckets": 32, "max_bucket_distance": 64, **config_overrides})
    return _save(WavLMModel, config, _wav2vec2_feature_extractor(do_normalize=do_normalize), folder, seed=seed)


def save_tiny_hubert(
    folder: str | Path, *, seed: int = 0, do_normalize: bool = True, **config_overrides: Any
) -> Path:
    """Write a tiny random ``HubertModel`` and its feature extractor (see ``save_tiny_wavlm``)."""
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(**{**_WAV2VEC2_FAMILY_SIZES, **config_overrides})
    return _save(HubertModel, config, _wav2vec2_feature_extractor(do_normalize=do_normalize), folder, seed=seed)


def save_tiny_wav2vec2(
    folder: str | Path, *, seed: int = 0, do_normalize: bool = True, **config_overrides: Any
) -> Path:
    """Write a tiny random ``Wav2Vec2Model`` and its feature extractor (see ``save_tiny_wavlm``)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(**{**_WAV2VEC2_FAMILY_SIZES, **config_overrides})
    return _save(Wav2Vec2Model, config, _wav2vec2_feature_extractor(do_normalize=do_normalize), folder, seed=seed)


def save_tiny_wavlm_xvector(folder: str | Path, *, seed: int = 0, xvector_output_dim: int = 32) -> Path:
    """Write a tiny random ``WavLMForXVector`` (a speaker-embedding model) and its feature extractor.

    Args:
        folder: where to write; created if missing.
        seed: torch seed for the random weights.
        xvector_output_dim: size of the speaker embedding it outputs.

    Returns:
        ``folder`` as a ``Path``.
    """
    from transformers import WavLMConfig, WavLMForXVector

    config = WavLMConfig(
        **_WAV2VEC2_FAMILY_SIZES,
        num_buckets=32,
        max_bucket_distance=64,
        tdnn_dim=(32, 32, 32, 32, 64),
        xvector_output_dim=xvector_output_dim,
        num_labels=4,
    )
    return _save(WavLMForXVector, config, _wav2vec2_feature_extractor(do_normalize=True), folder, seed=seed)


def tiny_whisper_config(**overrides):
    """A ``WhisperConfig`` of 2 + 2 layers, hidden 64, a 64-token vocabulary and 30-s input.

    A small vocabulary needs explicit special-token ids (pad 0, bos/decoder start 1, eos 2), or the
    embedding constructors fail. ``overrides`` replace any field.
    """
    from transformers import WhisperConfig

    fields = dict(
        vocab_size=64, num_mel_bins=80, d_model=HIDDEN_SIZE, encoder_layers=NUM_LAYERS, decoder_layers=NUM_LAYERS,
        encoder_attention_heads=NUM_HEADS, decoder_attention_heads=NUM_HEADS, encoder_ffn_dim=2 * HIDDEN_SIZE,
        decoder_ffn_dim=2 * HIDDEN_SIZE, max_source_positions=1500, max_target_positions=32,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )
    return WhisperConfig(**{**fields, **overrides})


def save_tiny_whisper(folder: str | Path, *, seed: int = 0, num_mel_bins: int = 80, **config_overrides: Any) -> Path:
    """Write a tiny random ``WhisperForConditionalGeneration`` (encoder and decoder) and its feature extractor.

    It keeps the real ``max_source_positions`` (1500 encoder frames = 30 s) so that 30-s parity with
    transformers can be tested. A small vocabulary needs explicit special-token ids.

    Args:
        folder: where to write; created if missing.
        seed: torch seed for the random weights.
        num_mel_bins: 80 (Whisper up to large-v2) or 128 (large-v3).
        config_overrides: ``WhisperConfig`` fields that replace the tiny defaults (``tiny_whisper_config``).

    Returns:
        ``folder`` as a ``Path``.
    """
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    config = tiny_whisper_config(num_mel_bins=num_mel_bins, suppress_tokens=[], begin_suppress_tokens=[],
                                 **config_overrides)
    extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
    return _save(WhisperForConditionalGeneration, config, extractor, folder, seed=seed)
