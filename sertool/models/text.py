"""The text branch of the "MM" systems: a transformers encoder → masked mean of its token states.

The encoder is frozen (RoBERTa-Large in the paper), so a transcript's embedding never changes: it is
computed once and cached on disk (``sertool.cache.text_embeddings``) instead of every epoch. With LoRA adapters
(``text_lora_rank``, by default ``lora_rank``) the encoder trains, its embeddings change every step, and the model
computes them in its forward pass instead.
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from sertool.cache.items import setup_key
from sertool.core.errors import SertoolError
from sertool.core.hub import load_pretrained, model_identity, model_revision, spelled
from sertool.models.lora import DEFAULT_ALPHA, apply_lora
from sertool.models.pooling import masked_mean

# How a transcript's embedding is pooled from the encoder's token states (part of every cache key, and what an
# ONNX folder of an MM model names for its users to compute the embedding its graph takes).
TEXT_POOLING = "masked-mean-last-hidden-state"
# Attention projections that LoRA adapts, per family: the first pair an encoder has is used.
LORA_TARGET_CANDIDATES: tuple[tuple[str, str], ...] = (
    ("query", "value"),  # BERT, RoBERTa, MiniLM, ELECTRA
    ("q_proj", "v_proj"),  # BART-style encoders, ModernBERT-style and most recent models
    ("q_lin", "v_lin"),  # DistilBERT
)


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
        lora_alpha: float = DEFAULT_ALPHA,
        flag: str = "--text-model",
        pretrained_weights: bool = True,
    ) -> None:
        """
        Args:
            model_name_or_path: hub id (e.g. ``FacebookAI/roberta-large``) or local folder of an encoder
                and its tokenizer.
            max_tokens: transcripts are truncated to this many tokens (and to the tokenizer's limit).
            lora_rank: >0 adds LoRA adapters of this rank.
            lora_alpha: LoRA scale numerator.
            flag: the option that names the model, as the caller spells it (``--text-model``, or
                ``text_model=`` in Python: ``sertool.core.hub.OptionSpelling``), for error messages.
            pretrained_weights: False builds the encoder from its config alone, with random weights, and reads
                the tokenizer only if LoRA trains it (a memory plan's model, which embeds nothing else).

        Raises:
            SertoolError: the model cannot be loaded, or LoRA was asked for an encoder whose attention
                projections have none of the known names.
        """
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        super().__init__()
        self.model_name_or_path = model_name_or_path
        self.tokenizer = (load_pretrained(AutoTokenizer.from_pretrained, model_name_or_path, flag=flag)
                          if pretrained_weights or lora_rank > 0 else None)
        self.encoder = (load_pretrained(AutoModel.from_pretrained, model_name_or_path, flag=flag) if pretrained_weights
                        else AutoModel.from_config(load_pretrained(AutoConfig.from_pretrained, model_name_or_path,
                                                                   flag=flag)))
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        self.output_dim: int = self.encoder.config.hidden_size
        self.max_tokens = min(max_tokens, self.tokenizer.model_max_length) if self.tokenizer is not None else max_tokens
        self.revision = model_revision(model_name_or_path, self.encoder.config.to_json_string())
        if lora_rank > 0:
            apply_lora(self.encoder, rank=lora_rank, alpha=lora_alpha,
                       target_modules=_lora_targets(self.encoder, spelled(flag, model_name_or_path)))

    @property
    def trainable(self) -> bool:
        """Whether any weight trains (LoRA): then embeddings change and must not be cached."""
        return any(parameter.requires_grad for parameter in self.parameters())

    @property
    def cache_key(self) -> str:
        """Names everything an embedding depends on: model, its revision, truncation and pooling."""
        model = model_identity(self.model_name_or_path)
        return setup_key(model, {
            "model": model,
            "revision": self.revision,
            "max_tokens": self.max_tokens,
            "pooling": TEXT_POOLING,
        })

    def train(self, mode: bool = True) -> "TextEncoder":
        """A frozen encoder stays in eval mode (no dropout), so its embeddings are deterministic."""
        super().train(mode)
        if not self.trainable:
            self.encoder.eval()
        return self

    def embed(self, texts: Sequence[str], *, batch_size: int = 64) -> Tensor:
        """Embeddings of ``texts``, ``[N, output_dim]`` float32 on the encoder's device.

        Texts are encoded in batches of similar length (less padding); the result keeps the input order.
        Gradients flow only when the encoder is trainable.
        """
        if self.tokenizer is None:
            raise ValueError("a text encoder built from its config alone (a memory plan's) has no tokenizer")
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
        if not chunks:
            return torch.empty(0, self.output_dim, device=device)
        sorted_embeddings = torch.cat(chunks)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return sorted_embeddings[inverse.to(device)]

    def forward(self, texts: Sequence[str]) -> Tensor:
        return self.embed(texts)


def _lora_targets(encoder: nn.Module, where: str) -> tuple[str, str]:
    linears = (name for name, module in encoder.named_modules() if isinstance(module, nn.Linear))
    linear_names = {name.rsplit(".", 1)[-1] for name in linears}
    for pair in LORA_TARGET_CANDIDATES:
        if set(pair) <= linear_names:
            return pair
    raise SertoolError(
        f"{where}: LoRA on the text encoder (--text-lora-rank, by default --lora-rank) needs attention projections "
        f"named one of {', '.join('/'.join(pair) for pair in LORA_TARGET_CANDIDATES)}; {type(encoder).__name__} has "
        "none. Use --text-lora-rank 0 (frozen, cached embeddings) or a BERT/RoBERTa-family encoder."
    )
