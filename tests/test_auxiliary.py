"""Auxiliary tasks: gender cross-entropy and speaker AAM-softmax, with unknown labels ignored."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sertool.models.auxiliary import (
    IGNORE_INDEX,
    GenderHead,
    SpeakerHead,
    aam_logits,
    aam_softmax_loss,
    masked_cross_entropy,
)

SCALE = 30.0


def reference_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean −log softmax(logits)[label] over the given rows, in float64 numpy."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_softmax[np.arange(len(labels)), labels].mean())


def random_cosines(batch: int = 6, classes: int = 5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, classes, generator=generator, dtype=torch.float64) * 1.6 - 0.8


def test_masked_cross_entropy_matches_reference_on_known_rows() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 1, IGNORE_INDEX, 1, IGNORE_INDEX, 0])
    known = (labels != IGNORE_INDEX).numpy()
    expected = reference_cross_entropy(logits.numpy()[known], labels.numpy()[known])
    assert masked_cross_entropy(logits, labels).item() == pytest.approx(expected, abs=1e-12)


def test_aam_without_margin_is_scaled_cosine_softmax() -> None:
    cosine = random_cosines()
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    expected = reference_cross_entropy(SCALE * cosine.numpy(), labels.numpy())
    assert aam_softmax_loss(cosine, labels, margin=0.0, scale=SCALE).item() == pytest.approx(expected, abs=1e-10)


def test_margin_moves_only_the_target_logit_to_s_cos_theta_plus_m() -> None:
    cosine = random_cosines()
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    margin = 0.2
    logits = aam_logits(cosine, labels, margin=margin, scale=SCALE).numpy()
    expected = SCALE * cosine.numpy()
    rows = np.arange(len(labels))
    expected[rows, labels] = SCALE * np.cos(np.arccos(cosine.numpy()[rows, labels]) + margin)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-10)
    assert (logits[rows, labels] < SCALE * cosine.numpy()[rows, labels]).all()
    # The margin makes the task harder: a higher loss than without it.
    without_margin = aam_softmax_loss(cosine, labels, margin=0.0, scale=SCALE)
    assert aam_softmax_loss(cosine, labels, margin=margin, scale=SCALE) > without_margin


def test_target_logit_decreases_monotonically_even_past_pi() -> None:
    cosine = torch.linspace(-1, 1, 2001, dtype=torch.float64).unsqueeze(1)
    target = aam_logits(cosine, torch.zeros(len(cosine), dtype=torch.long), margin=0.5, scale=1.0).squeeze(1)
    assert (target.diff() >= 0).all()
    assert torch.isfinite(target).all()


def test_ignored_speakers_contribute_nothing() -> None:
    cosine = random_cosines().requires_grad_(True)
    labels = torch.tensor([0, IGNORE_INDEX, 2, IGNORE_INDEX, 1, 3])
    known = labels != IGNORE_INDEX
    loss = aam_softmax_loss(cosine, labels, margin=0.2, scale=SCALE)
    only_known = aam_softmax_loss(cosine.detach()[known], labels[known], margin=0.2, scale=SCALE)
    assert loss.item() == pytest.approx(only_known.item(), abs=1e-12)
    loss.backward()
    assert cosine.grad[~known].abs().max().item() == 0.0
    # An ignored row's logits carry no margin.
    logits = aam_logits(cosine.detach(), labels, margin=0.2, scale=SCALE)
    torch.testing.assert_close(logits[~known], SCALE * cosine.detach()[~known])


@pytest.mark.parametrize("loss_name", ["gender", "speaker"])
def test_all_ignored_batch_gives_zero_not_nan(loss_name: str) -> None:
    scores = random_cosines(4, 3).requires_grad_(True)
    labels = torch.full((4,), IGNORE_INDEX)
    if loss_name == "gender":
        loss = masked_cross_entropy(scores, labels)
    else:
        loss = aam_softmax_loss(scores, labels, margin=0.2, scale=SCALE)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(scores.grad, torch.zeros_like(scores))


def test_speaker_head_cosines_are_between_normalised_vectors() -> None:
    torch.manual_seed(0)
    head = SpeakerHead(16, num_speakers=7, hidden_dim=12, dropout=0.0)
    representation = torch.randn(5, 16)
    embedding, cosine = head(representation)
    assert embedding.shape == (5, 12) and cosine.shape == (5, 7)
    weights = head.class_weights.detach()
    expected = np.array(
        [[e @ w / (np.linalg.norm(e) * np.linalg.norm(w)) for w in weights.numpy()] for e in embedding.detach().numpy()]
    )
    np.testing.assert_allclose(cosine.detach().numpy(), expected, atol=1e-6)


def test_speaker_head_needs_speakers() -> None:
    with pytest.raises(ValueError, match="speaker"):
        SpeakerHead(16, num_speakers=0, hidden_dim=12, dropout=0.0)


def test_gender_head_gives_two_logits_and_learns() -> None:
    torch.manual_seed(0)
    head = GenderHead(8, hidden_dim=16, dropout=0.0)
    features = torch.randn(32, 8)
    labels = (features[:, 0] > 0).long()
    labels[::4] = IGNORE_INDEX
    assert head(features).shape == (32, 2)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    initial = masked_cross_entropy(head(features), labels).item()
    for _ in range(50):
        optimizer.zero_grad()
        masked_cross_entropy(head(features), labels).backward()
        optimizer.step()
    assert masked_cross_entropy(head(features), labels).item() < 0.5 * initial
    assert math.isfinite(initial)


def test_log_mel_statistics_stand_in_is_batch_invariant_and_separates_pitch():
    from sertool.models.speaker_embedding import build_speaker_embedder

    embedder = build_speaker_embedder("log-mel-stats")
    t = torch.arange(16_000) / 16_000
    low, high = torch.sin(2 * torch.pi * 110 * t), torch.sin(2 * torch.pi * 220 * t)
    waveforms = torch.stack([low, high])
    mask = torch.ones_like(waveforms, dtype=torch.bool)
    mask[1, 12_000:] = False
    batched = embedder(waveforms, mask)
    alone = embedder(waveforms[1:, :12_000], mask[1:, :12_000])
    torch.testing.assert_close(batched[1:], alone, atol=1e-5, rtol=1e-5)
    again = embedder(torch.stack([0.5 * low]), torch.ones(1, 16_000, dtype=torch.bool))
    # The same voice louder differs by a constant in log-mel: closer than another pitch.
    std_part = slice(80, 160)
    assert torch.dist(again[0, std_part], batched[0, std_part]) < torch.dist(batched[1, std_part], batched[0, std_part])
