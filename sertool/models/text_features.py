"""Transcript embeddings of a run's utterances, from the on-disk cache of a frozen text encoder."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from sertool.cache.items import cache_root
from sertool.cache.text_embeddings import TEXT_EMBEDDING_CACHE_SUBDIR, TextEmbeddingCache
from sertool.data.records import Utterance
from sertool.models.ser_model import SERModel
from sertool.models.text import TextEncoder


def text_embedding_cache(model: SERModel, cache_dir: str | Path | None = None) -> TextEmbeddingCache | None:
    """The cache of ``model``'s frozen text encoder (``text_embeddings/`` under ``cache_dir``), or None when
    the model has no text branch or trains its text encoder (LoRA: embeddings change every step, so the
    model computes them itself). Keep it across calls: it holds what it read in memory."""
    if model.text_encoder is None or model.needs_texts:
        return None
    return encoder_cache(model.text_encoder, cache_dir)


def encoder_cache(encoder: TextEncoder, cache_dir: str | Path | None = None) -> TextEmbeddingCache:
    """The cache of the frozen text encoder ``encoder`` (``text_embeddings/`` under ``cache_dir``), as
    ``text_embedding_cache`` finds a model's: the cache of any model with that encoder."""
    return TextEmbeddingCache(cache_root(cache_dir) / TEXT_EMBEDDING_CACHE_SUBDIR, encoder)


def transcript_embeddings(
    model: SERModel, utterances: Sequence[Utterance], cache_dir: str | Path | None = None, *,
    cache: TextEmbeddingCache | None = None,
) -> dict[str, torch.Tensor] | None:
    """Utterance id → embedding of its transcript, for models whose text encoder is frozen.

    Returns None when the model has no text branch or trains its text encoder. Utterances without a
    transcript are left out; the caller decides what that means. Each distinct text is encoded once, ever:
    later runs, epochs and commands read the cache (``cache``, else ``text_embedding_cache(model,
    cache_dir)``).
    """
    if cache is None:
        cache = text_embedding_cache(model, cache_dir)
    return None if cache is None else cached_embeddings(cache, utterances)


def cached_embeddings(cache: TextEmbeddingCache, utterances: Sequence[Utterance]) -> dict[str, torch.Tensor]:
    """Utterance id → embedding of its transcript, from ``cache`` (computed where it lacks one); utterances
    without a transcript are left out."""
    with_text = [utt for utt in utterances if utt.transcript is not None]
    # The ignore below: with_text holds only utterances whose transcript is a str, which mypy cannot follow.
    embeddings = cache.get([utt.transcript for utt in with_text])  # type: ignore[misc]
    return {utt.id: embedding for utt, embedding in zip(with_text, embeddings, strict=True)}
