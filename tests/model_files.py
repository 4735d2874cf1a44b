"""A model folder's weights changed as someone outside sertool would: rewritten with safetensors itself, and
``config.json``'s digests made to match (a folder that is whole but wrong, not a damaged one)."""
from __future__ import annotations

import json
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
    record_files(folder)


def record_files(folder: Path) -> None:
    """Record the folder's files as they now are in its ``config.json`` (digests and seal, where it has them)."""
    from sertool.guards.integrity import FILES_SHA256, file_digests, seal

    config_path = folder / "config.json"
    data = json.loads(config_path.read_text())
    if FILES_SHA256 in data:
        data[FILES_SHA256] = file_digests(folder / name for name in data[FILES_SHA256])
        config_path.write_text(json.dumps(seal(data), indent=2) + "\n")


def cast_floating(dtype: torch.dtype) -> Callable[[dict[str, torch.Tensor]], None]:
    """A ``change`` that casts every floating-point tensor to ``dtype``."""
    def change(tensors: dict[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():
            if tensor.is_floating_point():
                tensors[name] = tensor.to(dtype)
    return change


def as_before_digests(config: dict) -> dict:
    """A folder's ``config.json`` as a sertool before the integrity checks wrote it: no file digests, no seal, no
    digest of the training ids."""
    from sertool.guards.integrity import CONFIG_SHA256, FILES_SHA256

    older = {key: value for key, value in config.items() if key not in (CONFIG_SHA256, FILES_SHA256)}
    if isinstance(older.get("data"), dict):
        older["data"] = {key: value for key, value in older["data"].items() if key != "training_data_sha256"}
    return older
