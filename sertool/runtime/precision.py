"""Mixed precision (``--amp``) for training and inference alike."""
from __future__ import annotations

import torch

from sertool.config import AMP_CHOICES, DEFAULT_AMP
from sertool.errors import SertoolError

BF16_CAPABILITY = (8, 0)  # the first CUDA compute capability with bf16 tensor cores (Ampere)


def resolve_amp(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp``: None means full precision.

    "auto" is bf16 on GPUs that compute in it natively (compute capability 8.0 and later: A100, H100, RTX 30xx
    and later), fp16 on older GPUs (V100, T4, RTX 20xx), and off on the CPU (CPU autocast is slow for
    convolutions and rarely what a user wants unless asked).

    Raises:
        SertoolError: ``choice`` is not one of ``AMP_CHOICES``, or fp16 was asked for on the CPU.
    """
    if choice not in AMP_CHOICES:
        raise SertoolError(f"--amp {choice!r}: choose one of {', '.join(AMP_CHOICES)}")
    if choice == "off" or (choice == DEFAULT_AMP and device.type != "cuda"):
        return None
    if choice == DEFAULT_AMP:
        # Not torch.cuda.is_bf16_supported(): it also counts bf16 that the GPU only emulates (V100, T4), slower
        # than fp16 there and not what the docs promise.
        native_bf16 = torch.cuda.get_device_capability(device) >= BF16_CAPABILITY
        return torch.bfloat16 if native_bf16 else torch.float16
    if choice == "fp16" and device.type != "cuda":
        raise SertoolError("--amp fp16 needs a CUDA GPU; use --amp bf16 on the CPU")
    return torch.bfloat16 if choice == "bf16" else torch.float16
