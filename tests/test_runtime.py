"""The runtime on hardware the CPU machine does not have: GPU generations (mocked device properties),
pinned memory, host syncs, random states per process."""
from __future__ import annotations

import types

import pytest
import torch

from sertool.runtime.precision import resolve_amp
from tests.cases import case

# (name, compute capability, what --amp auto must pick); every one of them "supports" bf16 by
# torch.cuda.is_bf16_supported(), which counts emulation.
GPUS = [
    ("Tesla V100-SXM2-32GB", (7, 0), torch.float16),
    ("Tesla T4", (7, 5), torch.float16),
    ("NVIDIA A100-SXM4-80GB", (8, 0), torch.bfloat16),
    ("NVIDIA H100 80GB HBM3", (9, 0), torch.bfloat16),
]


@pytest.fixture
def mock_gpu(monkeypatch):
    """Make ``torch.cuda`` describe one GPU of the given name and compute capability."""

    def install(name: str, capability: tuple[int, int]) -> None:
        properties = types.SimpleNamespace(name=name, major=capability[0], minor=capability[1],
                                           total_memory=32 * 2**30)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        # What torch answers on such GPUs: bf16 works, emulated where the capability is below 8.0.
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)

    return install


@case("training", "`--amp auto` on a V100 or T4 (was: bf16, which they only emulate)",
      "fp16 with a GradScaler; bf16 from compute capability 8.0 (A100, H100)")
@pytest.mark.parametrize(("name", "capability", "expected"), GPUS, ids=[gpu[0] for gpu in GPUS])
def test_amp_auto_follows_the_compute_capability(mock_gpu, name, capability, expected):
    mock_gpu(name, capability)
    assert resolve_amp("auto", torch.device("cuda", 0)) == expected
    assert resolve_amp("bf16", torch.device("cuda", 0)) == torch.bfloat16  # asked for: as asked
    assert resolve_amp("auto", torch.device("cpu")) is None


@case("training", "`pin_memory` of the training and validation loaders (was: sertool's `Batch` has no `pin_memory()`, "
      "so nothing was pinned and every non-blocking copy to the GPU waited for its transfer)",
      "`Batch.pin_memory` pins every tensor of the batch, which the loader's pinning thread calls")
def test_a_batch_is_pinned_by_the_loaders_pinning(monkeypatch):
    from torch.utils.data._utils.pin_memory import pin_memory as pin_as_the_loader_does

    from sertool.data.dataset import collate

    items = [{"id": f"u{index}", "waveform": torch.randn(1600 + 160 * index), "targets": torch.rand(3),
              "gender_id": 0, "speaker_id": -100, "text": None, "text_embedding": torch.randn(4)} for index in range(3)]
    batch = collate(items)
    pinned: list[torch.Tensor] = []

    def pin(tensor: torch.Tensor) -> torch.Tensor:  # a CPU-only build cannot pin: record what would be pinned
        copy = tensor.clone()
        pinned.append(copy)
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    result = pin_as_the_loader_does(batch)
    assert type(result) is type(batch) and result.ids == batch.ids and result.texts == batch.texts
    tensors = {name: value for name, value in vars(batch).items() if isinstance(value, torch.Tensor)}
    assert {"waveforms", "sample_mask", "targets", "gender_ids", "speaker_ids", "text_embeddings"} <= tensors.keys()
    for name, tensor in tensors.items():
        assert any(getattr(result, name) is copy for copy in pinned), name
        assert torch.equal(getattr(result, name), tensor), name
    assert len(pinned) == len(tensors)
