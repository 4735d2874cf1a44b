"""SpecAugment on the fbank encoder's input: training only, inside each clip's real frames, seeded."""
from __future__ import annotations

import pytest
import torch

from sertool.core.config import ModelConfig
from sertool.core.errors import SertoolError
from sertool.models.backbones import build_backbone
from sertool.models.backbones.fbank import (
    FREQ_MASK_BINS,
    FREQ_MASKS,
    TIME_MASK_SHARE,
    TIME_MASKS,
    FbankBackbone,
    spec_augment,
)


def _features(lengths=(300, 180)):
    torch.manual_seed(0)
    features = torch.randn(len(lengths), max(lengths), 80)
    for row, length in enumerate(lengths):
        features[row, length:] = 0
    return features, torch.tensor(lengths)


def test_masks_lie_inside_the_real_frames_and_within_the_policy():
    features, lengths = _features()
    torch.manual_seed(1)
    masked = spec_augment(features, lengths)
    assert torch.equal(masked[1, 180:], features[1, 180:])  # padding untouched (zero)
    for row, length in enumerate(lengths.tolist()):
        zero = masked[row, :length] == 0
        changed = zero & (features[row, :length] != 0)
        full_bands = zero.all(dim=0).sum().item()
        full_frames = zero.all(dim=1).sum().item()
        assert changed.any()
        assert full_bands <= FREQ_MASKS * FREQ_MASK_BINS
        assert full_frames <= TIME_MASKS * int(TIME_MASK_SHARE * length)
        # every changed value lies in a masked band or a masked span
        assert (changed & ~zero.all(dim=0)[None, :] & ~zero.all(dim=1)[:, None]).sum() == 0
    torch.manual_seed(1)
    assert torch.equal(spec_augment(features, lengths), masked)  # the seed reproduces the masks
    assert not torch.equal(spec_augment(features, lengths), masked)  # the next draw differs


def test_evaluation_never_masks_and_training_does():
    torch.manual_seed(0)
    plain = FbankBackbone(16)
    augmented = FbankBackbone(16, spec_augment=True)
    augmented.load_state_dict(plain.state_dict())
    waveforms = torch.randn(2, 16_000) * 0.1
    mask = torch.ones(2, 16_000, dtype=torch.bool)
    plain.eval(), augmented.eval()
    assert torch.equal(plain(waveforms, mask)[0], augmented(waveforms, mask)[0])
    plain.train(), augmented.train()
    torch.manual_seed(3)
    assert not torch.allclose(plain(waveforms, mask)[0], augmented(waveforms, mask)[0])


def test_spec_augment_is_refused_for_pretrained_backbones():
    with pytest.raises(SertoolError, match="--spec-augment"):
        build_backbone(ModelConfig(backbone="wavlm", spec_augment=True))
