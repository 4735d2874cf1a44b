"""Tiny trainable systems for tests: seconds to train on the learnable tone corpus."""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Container
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sertool.core.config import Config
from sertool.models.losses import SERLoss
from sertool.models.ser_model import ModelOutput
from sertool.training.reporter import Reporter


def small_config(corpus: Path, **train_overrides) -> Config:
    """A fast, dropout-free fbank system (dropout would make DDP ranks differ from one process)."""
    config = Config()
    config.data.corpus = str(corpus)
    config.data.num_workers = 0
    config.model.backbone = "fbank"
    config.model.fbank_dim = 32
    config.model.head_hidden_dim = 16
    config.model.head_dropout = 0.0
    config.model.aux = ("gender",)
    config.train.sampling = "whole"
    config.train.max_batch_s = 0.0
    config.train.batch_size = 4
    config.train.accum_steps = 1
    config.train.epochs = 2
    config.train.lr_heads = 1e-3
    config.train.warmup_fraction = 0.0
    for key, value in train_overrides.items():
        setattr(config.train, key, value)
    return config


class InterruptAt(Reporter):
    """A reporter that interrupts a run (as Ctrl-C would) when it reports optimiser step ``step``."""

    def __init__(self, step: int) -> None:
        self.stop_step = step

    def step(self, stats):
        if stats["step"] == self.stop_step:
            raise KeyboardInterrupt


def nan_gradient_loss(calls: Container[int]) -> Callable[..., tuple[Tensor, dict]]:
    """A ``SERLoss.__call__`` whose value stays finite but whose gradient is NaN at its calls numbered in
    ``calls`` (from 1, one call per micro-batch): patch it in to poison an exact step's gradients."""
    real_loss = SERLoss.__call__
    seen = itertools.count(1)

    def loss_with_nan_gradient(self: SERLoss, output: ModelOutput, targets: Tensor,
                               **kwargs: Any) -> tuple[Tensor, dict]:
        if next(seen) in calls:
            output.emotion.register_hook(lambda gradient: torch.full_like(gradient, math.nan))
        return real_loss(self, output, targets, **kwargs)

    return loss_with_nan_gradient
