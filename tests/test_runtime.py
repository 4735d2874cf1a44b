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
