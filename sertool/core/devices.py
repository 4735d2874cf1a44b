"""``--device`` → a ``torch.device``, the half precision it computes in, and ``--threads``: the rules every command
and the ASR model use."""
from __future__ import annotations

import torch

from sertool.core.config import DEFAULT_DEVICE
from sertool.core.errors import SertoolError


def select_device(device: str | torch.device = DEFAULT_DEVICE, *, local_rank: int = 0) -> torch.device:
    """The ``torch.device`` for ``--device``: "auto" is this rank's GPU when CUDA is available, else the CPU.

    Args:
        device: one of ``sertool.core.config.DEVICE_CHOICES`` ("auto", "cpu", "cuda"), or an explicit torch
            device ("cuda:1").
        local_rank: the GPU of this process under torchrun (0 in a single process).

    Raises:
        SertoolError: a CUDA device is asked for where there is none (or not that many), or ``device`` names
            no device torch knows.
    """
    if device == DEFAULT_DEVICE:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device("cuda", local_rank) if device == "cuda" else torch.device(device)
    except (RuntimeError, ValueError):
        raise SertoolError(f"--device {device}: not a device; use auto, cpu or cuda") from None
    if chosen.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not available:
            raise SertoolError(f"--device {device}: this machine has no usable CUDA device (or this torch is built "
                               "without CUDA); use --device cpu, or --device auto to take a GPU only where there is "
                               "one")
        if (chosen.index or 0) >= available:
            raise SertoolError(f"--device {device}: GPU {chosen.index} asked for, and {available} visible; under "
                               "torchrun, give at most one process per visible GPU")
    elif chosen.type != "cpu":
        raise SertoolError(f"--device {device}: sertool runs on cpu or cuda")
    return chosen


BF16_CAPABILITY = (8, 0)  # the first CUDA compute capability with bf16 tensor cores (Ampere)


def half_precision(device: torch.device) -> torch.dtype | None:
    """The half precision ``device`` computes in fastest (``--amp auto``'s rule, and the ASR model's): bf16 on a
    GPU that computes in it natively (compute capability 8.0 and later: A100, H100, RTX 30xx and later), fp16
    on an older GPU (V100, T4, RTX 20xx), None (float32) on the CPU, where half precision is slow for
    convolutions and rarely what a user wants unless asked.

    Not ``torch.cuda.is_bf16_supported()``: it also counts bf16 that a GPU only emulates (V100, T4), slower than
    fp16 there and not what the docs promise.
    """
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= BF16_CAPABILITY else torch.float16


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for torch's operations in this process (0: leave torch's default, one per
    core). Fewer threads than cores suit a machine that also runs other work.

    Raises:
        SertoolError: ``threads`` is negative.
    """
    if threads < 0:
        raise SertoolError(f"--threads {threads}: give a number of threads ≥ 1, or 0 for torch's default")
    if threads:
        torch.set_num_threads(threads)
