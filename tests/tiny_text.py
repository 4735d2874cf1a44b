"""Tiny random text encoders with a real tokenizer, saved to a folder, for tests without the model hub.

The tokenizer is a WordPiece one built with the ``tokenizers`` library from a small vocabulary (special
tokens, whole words, and every letter as a word start and a continuation, so any lowercase text
tokenizes without [UNK]); it works with transformers 4 and 5 alike.
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import torch

HIDDEN_SIZE = 64
NUM_LAYERS = 2
NUM_HEADS = 4
MAX_POSITIONS = 64
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WORDS = ("i", "am", "very", "happy", "feel", "glad", "the", "table", "is", "wooden", "sad", "a")


def tiny_vocabulary() -> dict[str, int]:
    """Token -> id; [PAD] is 0."""
    tokens = [*SPECIAL_TOKENS, *WORDS, *string.ascii_lowercase, *(f"##{letter}" for letter in string.ascii_lowercase)]
    tokens += [*string.digits, *string.punctuation]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}


def save_tiny_tokenizer(folder: str | Path) -> Path:
    """Write a BERT-style WordPiece tokenizer (lowercasing, [CLS] … [SEP]) that ``AutoTokenizer`` loads."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    vocabulary = tiny_vocabulary()
    backend = Tokenizer(WordPiece(vocabulary, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocabulary["[CLS]"]), ("[SEP]", vocabulary["[SEP]"])],
    )
    backend.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_POSITIONS,
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_text_encoder(folder: str | Path, *, family: str = "bert", seed: int = 0, **config_overrides: Any) -> Path:
    """Write a tiny random BERT or RoBERTa encoder (2 layers, hidden 64, 4 heads) and its tokenizer.

    Args:
        folder: where to write; created if missing.
        family: ``"bert"`` or ``"roberta"`` (the paper's text encoder family).
        seed: torch seed for the random weights.
        config_overrides: config fields that replace the tiny defaults.

    Returns:
        ``folder`` as a ``Path``.
    """
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    classes = {"bert": (BertConfig, BertModel), "roberta": (RobertaConfig, RobertaModel)}
    config_class, model_class = classes[family]
    sizes = dict(
        vocab_size=len(tiny_vocabulary()),
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        intermediate_size=2 * HIDDEN_SIZE,
        # RoBERTa numbers positions after the padding index, hence two extra positions.
        max_position_embeddings=MAX_POSITIONS + (2 if family == "roberta" else 0),
        pad_token_id=0,  # the tokenizer's [PAD], which RoBERTa's position ids skip
    )
    torch.manual_seed(seed)
    model = model_class(config_class(**{**sizes, **config_overrides}))
    folder = save_tiny_tokenizer(folder)
    model.save_pretrained(folder)
    return folder
