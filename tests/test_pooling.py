"""Masked pooling: padding never changes an utterance's vector."""
from __future__ import annotations

import pytest
import torch

from sertool.core.errors import SertoolError
from sertool.models.pooling import AttentiveStatisticsPooling, MeanPooling, build_pooling, masked_mean

DIM = 8
LENGTHS = [5, 9, 2, 7]


def padded_batch(seed: int = 0, *, padding_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Random utterances of ``LENGTHS`` frames, padded to the longest with ``padding_value``."""
    generator = torch.Generator().manual_seed(seed)
    utterances = [torch.randn(length, DIM, generator=generator) for length in LENGTHS]
    frames = torch.full((len(LENGTHS), max(LENGTHS), DIM), padding_value)
    mask = torch.zeros(len(LENGTHS), max(LENGTHS), dtype=torch.bool)
    for i, utterance in enumerate(utterances):
        frames[i, : len(utterance)] = utterance
        mask[i, : len(utterance)] = True
    return frames, mask, utterances


def make_pooling(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_pooling(name, DIM)


def test_mean_equals_a_manual_mean() -> None:
    frames, mask, utterances = padded_batch()
    expected = torch.stack([utterance.mean(dim=0) for utterance in utterances])
    torch.testing.assert_close(masked_mean(frames, mask), expected)


def test_attentive_matches_its_definition() -> None:
    pooling = make_pooling("attentive")
    frames, mask, utterances = padded_batch()
    with torch.no_grad():
        pooled = pooling(frames, mask)
        for i, x in enumerate(utterances):
            # Score v·tanh(Wx + b), softmax over the real frames, weighted mean ⊕ sqrt(E_w[x²] − mean²).
            scores = torch.tanh(x @ pooling.projection.weight.T + pooling.projection.bias) @ pooling.score.weight.T
            weights = torch.softmax(scores.squeeze(-1), dim=0).unsqueeze(-1)
            mean = (weights * x).sum(dim=0)
            std = ((weights * x * x).sum(dim=0) - mean**2).sqrt()
            torch.testing.assert_close(pooled[i], torch.cat([mean, std]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["mean", "attentive"])
def test_padded_batch_equals_one_at_a_time(name: str) -> None:
    pooling = make_pooling(name)
    frames, mask, utterances = padded_batch()
    with torch.no_grad():
        batched = pooling(frames, mask)
        for i, utterance in enumerate(utterances):
            alone = pooling(utterance.unsqueeze(0), torch.ones(1, len(utterance), dtype=torch.bool))
            assert (batched[i] - alone[0]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["mean", "attentive"])
@pytest.mark.parametrize("garbage", [1e6, float("nan"), float("inf")])
def test_garbage_in_padding_changes_nothing(name: str, garbage: float) -> None:
    pooling = make_pooling(name)
    clean_frames, mask, _ = padded_batch()
    dirty_frames, _, _ = padded_batch(padding_value=garbage)
    with torch.no_grad():
        torch.testing.assert_close(pooling(dirty_frames, mask), pooling(clean_frames, mask), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["mean", "attentive"])
def test_no_gradient_reaches_padded_frames(name: str) -> None:
    pooling = make_pooling(name)
    frames, mask, _ = padded_batch()
    frames.requires_grad_(True)
    pooling(frames, mask).sum().backward()
    assert frames.grad[~mask].abs().max().item() == 0.0
    assert frames.grad[mask].abs().max().item() > 0.0


def test_output_dims() -> None:
    assert isinstance(build_pooling("mean", DIM), MeanPooling) and build_pooling("mean", DIM).output_dim == DIM
    attentive = build_pooling("attentive", DIM)
    assert isinstance(attentive, AttentiveStatisticsPooling) and attentive.output_dim == 2 * DIM
    frames, mask, _ = padded_batch()
    assert attentive(frames, mask).shape == (len(LENGTHS), 2 * DIM)


def test_unknown_pooling_names_the_flag() -> None:
    with pytest.raises(SertoolError, match="--pooling max"):
        build_pooling("max", DIM)


@pytest.mark.parametrize("name", ["mean", "attentive"])
def test_an_utterance_without_frames_is_an_error(name: str) -> None:
    frames, mask, _ = padded_batch()
    mask[1] = False
    with pytest.raises(ValueError, match="no valid frame"):
        make_pooling(name)(frames, mask)
