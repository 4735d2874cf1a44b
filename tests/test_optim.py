"""The learning-rate schedule and the optimiser's parameter groups."""
from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from sertool.core.config import TrainConfig
from sertool.core.errors import SertoolError
from sertool.training.optim import LRSchedule, build_optimizer


def test_warmup_then_cosine_to_zero():
    schedule = LRSchedule(TrainConfig(schedule="cosine", warmup_fraction=0.1), total_steps=100)
    assert schedule.warmup_steps == 10
    assert [schedule.multiplier(step) for step in (0, 4, 9)] == pytest.approx([1 / 11, 5 / 11, 10 / 11])
    assert schedule.multiplier(10) == pytest.approx(1.0)
    assert schedule.multiplier(55) == pytest.approx(0.5)  # half way through the decay
    assert schedule.multiplier(100) == pytest.approx(0.0, abs=1e-12)
    values = [schedule.multiplier(step) for step in range(10, 101)]
    assert all(a >= b for a, b in pairwise(values))  # monotone decay


def test_plateau_halves_after_a_validation_without_improvement_and_resumes_exactly():
    schedule = LRSchedule(TrainConfig(schedule="plateau", warmup_fraction=0.0), total_steps=50)
    schedule.on_validation(improved=True)
    assert schedule.multiplier(20) == 1.0
    schedule.on_validation(improved=False)
    schedule.on_validation(improved=False)
    assert schedule.multiplier(20) == 0.25
    restored = LRSchedule(TrainConfig(schedule="plateau", warmup_fraction=0.0), total_steps=1)
    restored.load_state_dict(schedule.state_dict())
    assert restored.multiplier(20) == 0.25 and restored.total_steps == 50


def test_apply_scales_each_groups_own_rate():
    backbone, heads = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    config = TrainConfig(lr_backbone=1e-5, lr_heads=2e-4, warmup_fraction=0.0)
    optimizer = build_optimizer({"backbone": list(backbone.parameters()), "heads": list(heads.parameters())}, config)
    LRSchedule(config, total_steps=10).apply(optimizer, step=5)
    factor = 0.5 * (1 + math.cos(math.pi * 0.5))
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([1e-5 * factor, 2e-4 * factor])


def test_bad_schedule_and_nothing_to_train():
    with pytest.raises(SertoolError, match="--schedule"):
        LRSchedule(TrainConfig(schedule="linear"), total_steps=10)
    with pytest.raises(SertoolError, match="nothing to train"):
        build_optimizer({"backbone": [], "heads": []}, TrainConfig())
