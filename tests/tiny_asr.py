"""A tiny random Whisper ASR model with a working tokenizer, saved to a folder, for tests without the hub.

What ``Transcriber`` loads: ``WhisperForConditionalGeneration`` weights and a valid generation config, and a
processor (``WhisperFeatureExtractor`` + ``WhisperTokenizer``) built offline from a 64-token byte-level BPE
vocabulary written here. The tiny model's window is ``window_s`` seconds (2 s by default instead of
Whisper's 30 s: the feature extractor's ``chunk_length`` and the encoder's ``max_source_positions`` move
together), so long-audio chunking is exercised with short clips.

The weights are drawn with a large ``init_std`` so that the greedy output depends on the audio (with the
usual 0.02 a random decoder repeats one token whatever it hears); it is gibberish, but deterministic.
"""
from __future__ import annotations

import string
from pathlib import Path

import torch

from tests.tiny_speech import tiny_whisper_config

# Explicit special-token ids, as a small vocabulary needs (the WhisperConfig defaults point past it).
PAD_ID, START_ID, END_ID, NO_TIMESTAMPS_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ("<|pad|>", "<|startoftranscript|>", "<|endoftext|>", "<|notimestamps|>")
SPACE = "\u0120"  # "Ġ": how byte-level BPE spells a space
MEL_FRAMES_PER_S = 100  # the feature extractor's 10-ms hop
VOCAB_SIZE = 64


def tiny_merges() -> list[tuple[str, str]]:
    """BPE merges: a space with each letter, then a few common English pieces."""
    words = [(SPACE, letter) for letter in string.ascii_lowercase]
    pieces = [("t", "h"), (f"{SPACE}t", "h"), ("h", "e"), (f"{SPACE}th", "e")]
    pieces += [("i", "n"), (f"{SPACE}i", "n"), ("e", "r")]
    return words + pieces


def tiny_vocabulary() -> dict[str, int]:
    """Token -> id: the special tokens first (ids 0..3), then the byte-level symbols and merged pieces."""
    tokens = [*SPECIAL_TOKENS, SPACE, *string.ascii_lowercase, *("".join(pair) for pair in tiny_merges())]
    vocabulary = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    assert len(vocabulary) == VOCAB_SIZE, len(vocabulary)
    return vocabulary


def save_tiny_asr(folder: str | Path, *, seed: int = 0, window_s: int = 2, init_std: float = 0.5) -> Path:
    """Write a tiny random ``WhisperForConditionalGeneration`` (2+2 layers, hidden 64) and its processor.

    Args:
        folder: where to write; created if missing.
        seed: torch seed for the random weights (the global random state is left as it was).
        window_s: the model's input window in seconds (Whisper: 30).
        init_std: standard deviation of the random weights.

    Returns:
        ``folder`` as a ``Path``.
    """
    from transformers import (
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    config = tiny_whisper_config(
        vocab_size=VOCAB_SIZE,
        max_source_positions=window_s * MEL_FRAMES_PER_S // 2,  # the conv stem halves the mel frame rate
        pad_token_id=PAD_ID,
        bos_token_id=START_ID,
        eos_token_id=END_ID,
        decoder_start_token_id=START_ID,
        # As real Whisper does: never emit the prompt tokens, and never end before the first token.
        suppress_tokens=[PAD_ID, START_ID, NO_TIMESTAMPS_ID],
        begin_suppress_tokens=[END_ID],
        init_std=init_std,
    )
    tokenizer = WhisperTokenizer(
        vocab=tiny_vocabulary(),
        merges=tiny_merges(),
        unk_token=SPECIAL_TOKENS[END_ID],
        bos_token=SPECIAL_TOKENS[START_ID],
        eos_token=SPECIAL_TOKENS[END_ID],
        pad_token=SPECIAL_TOKENS[PAD_ID],
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [SPECIAL_TOKENS[NO_TIMESTAMPS_ID]]})
    processor = WhisperProcessor(WhisperFeatureExtractor(feature_size=80, chunk_length=window_s), tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
