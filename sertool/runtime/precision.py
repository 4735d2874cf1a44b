"""Mixed precision (``--amp``) for training and inference alike."""
from __future__ import annotations

import torch

from sertool.config import AMP_CHOICES, DEFAULT_AMP
from sertool.devices import half_precision
from sertool.errors import SertoolError


def resolve_amp(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp``: None means full precision.

    "auto" is ``sertool.devices.half_precision``: bf16 on GPUs that support it, fp16 on older GPUs, and off
    on the CPU.

    Raises:
        SertoolError: ``choice`` is not one of ``AMP_CHOICES``, or fp16 was asked for on the CPU.
    """
    if choice not in AMP_CHOICES:
        raise SertoolError(f"--amp {choice!r}: choose one of {', '.join(AMP_CHOICES)}")
    if choice == "off":
        return None
    if choice == DEFAULT_AMP:
        return half_precision(device)
    if choice == "fp16" and device.type != "cuda":
        raise SertoolError("--amp fp16 needs a CUDA GPU; use --amp bf16 on the CPU")
    return torch.bfloat16 if choice == "bf16" else torch.float16
