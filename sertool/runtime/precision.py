"""Mixed precision (``--amp``) for training and inference alike, and float32 that is IEEE float32 on a GPU."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from sertool.core.config import AMP_CHOICES, DEFAULT_AMP
from sertool.core.devices import half_precision
from sertool.core.errors import SertoolError


def resolve_amp(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp``: None means full precision.

    "auto" is ``sertool.core.devices.half_precision``: bf16 on GPUs that compute in it natively, fp16 on older
    GPUs (V100, T4), and off on the CPU.

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


@contextmanager
def ieee_float32(device: torch.device) -> Iterator[None]:
    """Within the block, float32 products on ``device`` are IEEE float32, never TF32; restored after.

    On Ampere and later GPUs torch may compute float32 matrix products (``torch.backends.cuda.matmul.allow_tf32``)
    and cuDNN convolutions (``torch.backends.cudnn.allow_tf32``, on by default) in TF32, which keeps 10
    mantissa bits of each input, as fp16. sertool trains and predicts with both off, whatever
    ``--amp``: ``--amp off`` is then float32 throughout (the reference a half-precision run is compared with),
    and under ``--amp`` the parts kept in float32 on purpose (the log-mel front ends, the heads' output layers)
    are float32 too. That costs speed only under ``--amp off``: with autocast the large products run in half
    precision anyway. The CPU has no TF32: nothing changes there.

    Args:
        device: where sertool computes.
    """
    if device.type != "cuda":
        yield
        return
    # allow_tf32: the switches every torch sertool supports (>= 2.1) has; newer torch maps them onto its
    # per-operator fp32_precision settings.
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
