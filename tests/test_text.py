"""Text branch: masked mean embeddings, LoRA, and the on-disk embedding cache."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sertool.cache.text_embeddings import TextEmbeddingCache
from sertool.core.errors import SertoolError
from sertool.core.hub import offline_copy
from sertool.models.lora import LoRALinear
from sertool.models.text import TextEncoder
from tests.tiny_text import save_tiny_text_encoder

TEXTS = ["I am very happy", "the table is wooden, said a sad man", "glad", "", "i feel glad i feel glad i feel glad"]


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_text_encoder(tmp_path_factory.mktemp("bert"), family="bert")


@pytest.fixture(scope="module")
def roberta_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_text_encoder(tmp_path_factory.mktemp("roberta"), family="roberta")


class CountingEncoder:
    """Counts the texts that reach ``TextEncoder.embed`` by wrapping it on one instance."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.calls: list[list[str]] = []
        original = encoder.embed

        def embed(texts, **kwargs):
            self.calls.append(list(texts))
            return original(texts, **kwargs)

        encoder.embed = embed  # type: ignore[method-assign]


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_padded_batch_equals_one_at_a_time(family: str, bert_folder: Path, roberta_folder: Path) -> None:
    encoder = TextEncoder(str(bert_folder if family == "bert" else roberta_folder))
    batched = encoder.embed(TEXTS, batch_size=len(TEXTS))
    assert batched.shape == (len(TEXTS), encoder.output_dim)
    for i, text in enumerate(TEXTS):
        alone = encoder.embed([text])
        assert (batched[i] - alone[0]).abs().max().item() <= 1e-5


def test_embedding_is_the_attention_masked_mean_of_token_states(bert_folder: Path) -> None:
    encoder = TextEncoder(str(bert_folder))
    tokens = encoder.tokenizer(TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        states = encoder.encoder(**tokens).last_hidden_state[0]
    torch.testing.assert_close(encoder.embed([TEXTS[0]])[0], states.mean(dim=0))


def test_frozen_encoder_has_no_trainable_weight_and_stays_in_eval_mode(bert_folder: Path) -> None:
    encoder = TextEncoder(str(bert_folder))
    encoder.train()
    assert not encoder.trainable and not encoder.encoder.training
    # Deterministic (no dropout) even after train().
    torch.testing.assert_close(encoder.embed(TEXTS), encoder.embed(TEXTS), atol=0, rtol=0)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_lora_at_init_leaves_embeddings_unchanged_then_trains(
    family: str, bert_folder: Path, roberta_folder: Path
) -> None:
    folder = str(bert_folder if family == "bert" else roberta_folder)
    frozen = TextEncoder(folder)
    adapted = TextEncoder(folder, lora_rank=4, lora_alpha=8.0)
    adapted.eval()
    torch.testing.assert_close(adapted.embed(TEXTS), frozen.embed(TEXTS), atol=1e-6, rtol=0)
    # The attention query and value projections of both layers are adapted, nothing else trains.
    wrapped = [name for name, module in adapted.encoder.named_modules() if isinstance(module, LoRALinear)]
    assert sorted(name.rsplit(".", 1)[-1] for name in wrapped) == ["query", "query", "value", "value"]
    trainable = [name for name, parameter in adapted.named_parameters() if parameter.requires_grad]
    assert trainable and all(name.endswith(("lora_a", "lora_b")) for name in trainable)
    # Gradients reach the adapters, and one step changes the embeddings.
    optimizer = torch.optim.SGD([p for p in adapted.parameters() if p.requires_grad], lr=0.1)
    adapted.embed(TEXTS).square().sum().backward()
    optimizer.step()
    assert (adapted.embed(TEXTS) - frozen.embed(TEXTS)).abs().max().item() > 1e-4


def test_cache_miss_then_hit_without_encoding_again(tmp_path: Path, bert_folder: Path) -> None:
    encoder = TextEncoder(str(bert_folder))
    counter = CountingEncoder(encoder)
    cache = TextEmbeddingCache(tmp_path / "cache", encoder)
    first = cache.get(TEXTS)
    assert (cache.misses, cache.hits) == (len(TEXTS), 0) and len(counter.calls) == 1
    second = cache.get(TEXTS)
    assert (cache.misses, cache.hits) == (len(TEXTS), len(TEXTS)) and len(counter.calls) == 1
    assert torch.equal(first, second)
    torch.testing.assert_close(first, encoder.embed(TEXTS))

    # Only new texts are encoded, each once even when repeated; the result keeps the request's order.
    mixed = [TEXTS[1], "a new one", TEXTS[0], "a new one"]
    result = cache.get(mixed)
    assert counter.calls[-1] == ["a new one"]
    assert torch.equal(result[0], first[1]) and torch.equal(result[2], first[0]) and torch.equal(result[1], result[3])


def test_cache_persists_across_instances(tmp_path: Path, bert_folder: Path) -> None:
    writer = TextEmbeddingCache(tmp_path, TextEncoder(str(bert_folder)))
    written = writer.get(TEXTS)
    reader_encoder = TextEncoder(str(bert_folder))
    counter = CountingEncoder(reader_encoder)
    reader = TextEmbeddingCache(tmp_path, reader_encoder)
    assert torch.equal(reader.get(TEXTS[::-1]), written.flip(0))
    assert counter.calls == [] and reader.hits == len(TEXTS)


def test_cache_files_are_complete_and_keyed_by_text_sha256(tmp_path: Path, bert_folder: Path) -> None:
    cache = TextEmbeddingCache(tmp_path, TextEncoder(str(bert_folder)))
    embeddings = cache.get(TEXTS[:2])
    files = list(cache.folder.iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # no temporary file left behind
    stored = load_file(files[0])
    assert [bytes(row.tolist()) for row in stored["sha256"]] == [hashlib.sha256(t.encode()).digest() for t in TEXTS[:2]]
    assert torch.equal(stored["embeddings"], embeddings)


def test_a_different_model_misses(tmp_path: Path, bert_folder: Path) -> None:
    TextEmbeddingCache(tmp_path, TextEncoder(str(bert_folder))).get(TEXTS)
    other_encoder = TextEncoder(str(save_tiny_text_encoder(tmp_path / "other", seed=1)))
    counter = CountingEncoder(other_encoder)
    other = TextEmbeddingCache(tmp_path, other_encoder)
    other.get(TEXTS)
    assert other.misses == len(TEXTS) and len(counter.calls) == 1
    # Other truncation, other key.
    assert TextEncoder(str(bert_folder), max_tokens=4).cache_key != TextEncoder(str(bert_folder)).cache_key


def test_new_weights_in_the_same_folder_change_the_key(tmp_path: Path) -> None:
    folder = save_tiny_text_encoder(tmp_path / "model", seed=0)
    before = TextEncoder(str(folder)).cache_key
    save_tiny_text_encoder(folder, seed=1)
    assert TextEncoder(str(folder)).cache_key != before


def test_lora_encoder_cannot_be_cached(tmp_path: Path, bert_folder: Path) -> None:
    with pytest.raises(ValueError, match="LoRA"):
        TextEmbeddingCache(tmp_path, TextEncoder(str(bert_folder), lora_rank=2))


def test_unreadable_cache_file_is_named(tmp_path: Path, bert_folder: Path) -> None:
    encoder = TextEncoder(str(bert_folder))
    cache = TextEmbeddingCache(tmp_path, encoder)
    cache.folder.mkdir(parents=True)
    broken = cache.folder / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(SertoolError, match="broken.safetensors"):
        cache.get(TEXTS)


def test_missing_model_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(SertoolError, match="--text-model"):
        TextEncoder(str(tmp_path / "nowhere"))


def test_real_minilm_embeddings_are_sensible() -> None:
    folder = offline_copy("sentence-transformers/all-MiniLM-L6-v2")  # make install puts it on the model shelf
    if folder is None:
        pytest.skip("all-MiniLM-L6-v2 is not installed offline")
    encoder = TextEncoder(folder)
    happy, glad, table = torch.nn.functional.normalize(
        encoder.embed(["I am very happy", "I feel glad", "the table is wooden"]), dim=-1
    )
    assert encoder.output_dim == 384
    assert happy @ glad > happy @ table + 0.2
