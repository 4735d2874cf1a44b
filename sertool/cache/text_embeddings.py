"""Transcript embeddings of a frozen text encoder, computed once per text and kept on disk.

A frozen encoder (``sertool.models.text.TextEncoder`` without LoRA) gives a text the same embedding in every
epoch, run and command, so each distinct text is encoded once, ever. The cache needs of the encoder only what
``TextEmbedder`` names: what it is (``cache_key``, its model and revision), its width and ``embed``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from sertool.cache.items import ItemCache, text_digest
from sertool.cache.vectors import VectorCodec

log = logging.getLogger(__name__)

TEXT_EMBEDDING_CACHE_SUBDIR = "text_embeddings"  # under sertool's cache folder, beside transcripts/


class TextEmbedder(Protocol):
    """What ``TextEmbeddingCache`` needs of a text encoder (``sertool.models.text.TextEncoder`` is one)."""

    @property
    def model_name_or_path(self) -> str: ...

    @property
    def revision(self) -> str: ...

    @property
    def output_dim(self) -> int: ...

    @property
    def trainable(self) -> bool:
        """Whether any weight trains: then embeddings change and must not be cached."""
        ...

    @property
    def cache_key(self) -> str:
        """Names everything an embedding depends on (``sertool.cache.items.setup_key``)."""
        ...

    def embed(self, texts: Sequence[str]) -> Tensor:
        """``[N, output_dim]`` embeddings of ``texts``, in order."""
        ...


class TextEmbeddingCache(ItemCache[str, Tensor]):
    """Transcript embeddings of one frozen text encoder, computed once and kept on disk (an ``ItemCache``).

    Layout: ``<cache_dir>/<encoder.cache_key>/`` holds immutable safetensors files, each with a
    ``sha256`` tensor (``[n, 32]`` uint8, the digest of each text's UTF-8 bytes) and an ``embeddings``
    tensor (``[n, E]`` float32), written as ``sertool.cache.items`` describes. Every ``get`` that meets
    new texts writes one new file: call it with all the texts of a split at once to keep the file count
    small.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], encoder: TextEmbedder) -> None:
        """
        Raises:
            ValueError: the encoder is trainable (LoRA), so its embeddings cannot be cached.
        """
        if encoder.trainable:
            raise ValueError(
                "a text encoder with LoRA adapters changes while training: compute its embeddings in forward"
            )
        codec = VectorCodec(tensor="embeddings", dim=encoder.output_dim, what="text embedding",
                            metadata={"model": encoder.model_name_or_path, "revision": encoder.revision})
        super().__init__(Path(cache_dir) / encoder.cache_key, codec, label="encoding {:,} transcripts")
        self.encoder = encoder

    def keys(self, items: Sequence[str]) -> list[str]:
        """The SHA-256 of each text's UTF-8 bytes."""
        return [text_digest(text) for text in items]

    def get(self, texts: Sequence[str]) -> Tensor:
        """Embeddings of ``texts``, ``[N, E]`` float32 on the CPU; encodes only texts not cached yet.

        Raises:
            SertoolError: a cache file cannot be read (the message names it).
        """
        rows = self._get(texts, self._encode)
        return torch.stack(rows) if rows else torch.empty(0, self.encoder.output_dim)

    def _encode(self, missing: list[str]) -> list[Tensor]:
        log.info("encoding %d transcripts with %s", len(missing), self.encoder.model_name_or_path)
        return list(self.encoder.embed(missing).detach().to("cpu", torch.float32))
