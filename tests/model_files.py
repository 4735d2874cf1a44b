"""A model folder's weights changed as someone outside sertool would: rewritten with safetensors itself."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def rewrite_weights(folder: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Rewrite ``folder/model.safetensors`` after ``change(tensors)`` (in place), its metadata kept (so the
    export id still matches ``config.json``)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = folder / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    change(tensors)
    save_file(tensors, str(path), metadata=metadata)


def cast_floating(dtype: torch.dtype) -> Callable[[dict[str, torch.Tensor]], None]:
    """A ``change`` that casts every floating-point tensor to ``dtype``."""
    def change(tensors: dict[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():
            if tensor.is_floating_point():
                tensors[name] = tensor.to(dtype)
    return change
