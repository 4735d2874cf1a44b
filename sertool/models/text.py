"""The text branch of the "MM" systems: a transformers encoder → masked mean of its token states.

The encoder is frozen (RoBERTa-Large in the paper), so a transcript's embedding never changes: it is
computed once and cached on disk (``TextEmbeddingCache``) instead of every epoch. With LoRA adapters
(``lora_rank > 0``) the encoder trains, its embeddings change every step, and the model computes them in
its forward pass instead.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor, nn

from sertool.errors import SertoolError
from sertool.io import write_cache_file
from sertool.models.hub import load_pretrained
from sertool.models.lora import apply_lora
from sertool.models.pooling import masked_mean
from sertool.progress import task

log = logging.getLogger(__name__)

# Attention projections that LoRA adapts, per family: the first pair an encoder has is used.
LORA_TARGET_CANDIDATES: tuple[tuple[str, str], ...] = (
    ("query", "value"),  # BERT, RoBERTa, MiniLM, ELECTRA
    ("q_proj", "v_proj"),  # BART-style encoders, ModernBERT-style and most recent models
    ("q_lin", "v_lin"),  # DistilBERT
)
_DIGEST_BYTES = 32  # sha256


class TextEncoder(nn.Module):
    """A transformers encoder that turns transcripts into one vector each.

    The embedding is the mean of the last hidden states over the real tokens (the attention mask weights
    it), so padding in a batch does not change it. Weights are frozen; with ``lora_rank > 0`` LoRA
    adapters on the attention query/value projections are the only trainable parameters.
    """

    def __init__(
        self,
        model_name_or_path: str,
        *,
        max_tokens: int = 512,
        lora_rank: int = 0,
        lora_alpha: float = 16.0,
        flag: str = "--text-model",
    ) -> None:
        """
        Args:
            model_name_or_path: hub id (e.g. ``FacebookAI/roberta-large``) or local folder of an encoder
                and its tokenizer.
            max_tokens: transcripts are truncated to this many tokens (and to the tokenizer's limit).
            lora_rank: >0 adds LoRA adapters of this rank.
            lora_alpha: LoRA scale numerator.
            flag: the CLI flag that names the model, for error messages.

        Raises:
            SertoolError: the model cannot be loaded, or LoRA was asked for an encoder whose attention
                projections have none of the known names.
        """
        from transformers import AutoModel, AutoTokenizer

        super().__init__()
        self.model_name_or_path = model_name_or_path
        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, model_name_or_path, flag=flag)
        self.encoder = load_pretrained(AutoModel.from_pretrained, model_name_or_path, flag=flag)
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        self.output_dim: int = self.encoder.config.hidden_size
        self.max_tokens = min(max_tokens, self.tokenizer.model_max_length)
        self.revision = model_revision(model_name_or_path, self.encoder.config.to_json_string())
        if lora_rank > 0:
            apply_lora(self.encoder, rank=lora_rank, alpha=lora_alpha, target_modules=_lora_targets(self.encoder, flag))

    @property
    def trainable(self) -> bool:
        """Whether any weight trains (LoRA): then embeddings change and must not be cached."""
        return any(parameter.requires_grad for parameter in self.parameters())

    @property
    def cache_key(self) -> str:
        """Names everything an embedding depends on: model, its revision, truncation and pooling."""
        model = _model_identity(self.model_name_or_path)
        identity = {
            "model": model,
            "revision": self.revision,
            "max_tokens": self.max_tokens,
            "pooling": "masked-mean-last-hidden-state",
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        readable = re.sub(r"[^\w.-]+", "--", Path(model).name if Path(model).is_absolute() else model)
        return f"{readable}-{digest}"

    def train(self, mode: bool = True) -> "TextEncoder":
        """A frozen encoder stays in eval mode (no dropout), so its embeddings are deterministic."""
        super().train(mode)
        if not self.trainable:
            self.encoder.eval()
        return self

    def embed(self, texts: Sequence[str], *, batch_size: int = 64,
              progress: Callable[[int, int], None] | None = None) -> Tensor:
        """Embeddings of ``texts``, ``[N, output_dim]`` float32 on the encoder's device.

        Texts are encoded in batches of similar length (less padding); the result keeps the input order.
        Gradients flow only when the encoder is trainable. ``progress(done, total)`` counts texts encoded.
        """
        device = next(self.encoder.parameters()).device
        order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
        chunks = []
        with nullcontext() if self.trainable else torch.no_grad():
            for start in range(0, len(order), batch_size):
                batch = [texts[index] for index in order[start : start + batch_size]]
                tokens = self.tokenizer(
                    batch, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
                ).to(device)
                hidden = self.encoder(**tokens).last_hidden_state
                chunks.append(masked_mean(hidden, tokens["attention_mask"]).float())
                if progress is not None:
                    progress(min(start + batch_size, len(order)), len(order))
        if not chunks:
            return torch.empty(0, self.output_dim, device=device)
        sorted_embeddings = torch.cat(chunks)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return sorted_embeddings[inverse.to(device)]

    def forward(self, texts: Sequence[str]) -> Tensor:
        return self.embed(texts)


class TextEmbeddingCache:
    """Transcript embeddings of one frozen ``TextEncoder``, computed once and kept on disk.

    Layout: ``<cache_dir>/<encoder.cache_key>/`` holds immutable safetensors files, each with a
    ``sha256`` tensor (``[n, 32]`` uint8, the digest of each text's UTF-8 bytes) and an ``embeddings``
    tensor (``[n, E]`` float32). Every ``get`` that meets new texts writes one new file, to a temporary
    name first and then renamed, so readers never see a partial file and concurrent writers never
    overwrite each other (at worst both compute the same embeddings). Call ``get`` with all the texts of
    a split at once to keep the file count small.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], encoder: TextEncoder) -> None:
        """
        Raises:
            ValueError: the encoder is trainable (LoRA), so its embeddings cannot be cached.
        """
        if encoder.trainable:
            raise ValueError(
                "a text encoder with LoRA adapters changes while training: compute its embeddings in forward"
            )
        self.encoder = encoder
        self.folder = Path(cache_dir).expanduser() / encoder.cache_key
        self.hits = 0  # requested texts found in the cache
        self.misses = 0  # requested texts that had to be encoded
        self._rows: dict[bytes, Tensor] = {}
        self._loaded_files: set[str] = set()

    def get(self, texts: Sequence[str]) -> Tensor:
        """Embeddings of ``texts``, ``[N, E]`` float32 on the CPU; encodes only texts not cached yet.

        Raises:
            SertoolError: a cache file cannot be read (the message names it).
        """
        digests = [hashlib.sha256(text.encode("utf-8")).digest() for text in texts]
        if any(digest not in self._rows for digest in digests):
            self._load_new_files()  # another process may have filled them in
        missing = {digest: text for digest, text in zip(digests, texts) if digest not in self._rows}
        missed = sum(digest in missing for digest in digests)
        self.misses += missed
        self.hits += len(digests) - missed
        if missing:
            log.info("encoding %d transcripts with %s", len(missing), self.encoder.model_name_or_path)
            with task(f"encoding {len(missing):,} transcripts") as progress:
                embeddings = self.encoder.embed(list(missing.values()), progress=progress)
            embeddings = embeddings.detach().to("cpu", torch.float32)
            self._write(list(missing), embeddings)
            self._rows.update(zip(missing, embeddings))
        if not digests:
            return torch.empty(0, self.encoder.output_dim)
        return torch.stack([self._rows[digest] for digest in digests])

    def _load_new_files(self) -> None:
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("*.safetensors")):
            if path.name in self._loaded_files:
                continue
            try:
                tensors = load_file(path)
                digests, embeddings = tensors["sha256"], tensors["embeddings"]
            except (SafetensorError, KeyError, OSError) as error:
                raise SertoolError(
                    f"text embedding cache file {path} is unreadable ({error}); delete it to recompute"
                ) from None
            if embeddings.shape[1] != self.encoder.output_dim:
                raise SertoolError(
                    f"text embedding cache file {path} holds {embeddings.shape[1]}-dim embeddings, the encoder "
                    f"gives {self.encoder.output_dim}; delete {self.folder} to recompute"
                )
            for digest, embedding in zip(digests, embeddings):
                self._rows.setdefault(bytes(digest.tolist()), embedding)
            self._loaded_files.add(path.name)

    def _write(self, digests: list[bytes], embeddings: Tensor) -> None:
        name = f"{uuid.uuid4().hex}.safetensors"
        digest_tensor = torch.frombuffer(bytearray(b"".join(digests)), dtype=torch.uint8).view(-1, _DIGEST_BYTES)
        metadata = {"model": self.encoder.model_name_or_path, "revision": self.encoder.revision}
        data = save({"sha256": digest_tensor, "embeddings": embeddings.contiguous()}, metadata=metadata)
        if write_cache_file(self.folder / name, data):
            self._loaded_files.add(name)


def model_revision(model_name_or_path: str, config_json: str) -> str:
    """A string that changes when the model's weights may have changed.

    A local folder: a hash of its files' names, sizes and modification times (copying a folder without
    keeping times gives a new revision: a needless recomputation, never a stale embedding). A hub id:
    the commit of the cached snapshot. Otherwise a hash of the model config.
    """
    path = Path(model_name_or_path).expanduser()
    if path.is_dir():
        files = sorted(item for item in path.iterdir() if item.is_file())
        stamp = [(item.name, item.stat().st_size, item.stat().st_mtime_ns) for item in files]
        return "files-" + hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model_name_or_path, "config.json")
    if isinstance(cached, str) and Path(cached).parent.parent.name == "snapshots":
        return "commit-" + Path(cached).parent.name
    return "config-" + hashlib.sha256(config_json.encode()).hexdigest()[:16]


def _model_identity(model_name_or_path: str) -> str:
    path = Path(model_name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else model_name_or_path


def _lora_targets(encoder: nn.Module, flag: str) -> tuple[str, str]:
    linears = (name for name, module in encoder.named_modules() if isinstance(module, nn.Linear))
    linear_names = {name.rsplit(".", 1)[-1] for name in linears}
    for pair in LORA_TARGET_CANDIDATES:
        if set(pair) <= linear_names:
            return pair
    raise SertoolError(
        f"{flag}: LoRA (--lora-rank) needs attention projections named one of "
        f"{', '.join('/'.join(pair) for pair in LORA_TARGET_CANDIDATES)}; {type(encoder).__name__} has none. "
        "Use --lora-rank 0 (frozen, cached embeddings) or a BERT/RoBERTa-family encoder."
    )
