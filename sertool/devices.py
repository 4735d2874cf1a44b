"""``--device`` → a ``torch.device``: the one rule every command and the ASR model use."""
from __future__ import annotations

import torch

from sertool.config import DEFAULT_DEVICE


def select_device(device: str | torch.device = DEFAULT_DEVICE, *, local_rank: int = 0) -> torch.device:
    """The ``torch.device`` for ``--device``: "auto" is this rank's GPU when CUDA is available, else the CPU.

    Args:
        device: one of ``sertool.config.DEVICE_CHOICES`` ("auto", "cpu", "cuda"), or an explicit torch
            device ("cuda:1").
        local_rank: the GPU of this process under torchrun (0 in a single process).
    """
    if device == DEFAULT_DEVICE:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device("cuda", local_rank) if device == "cuda" else torch.device(device)
