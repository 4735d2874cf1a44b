"""The runtime on hardware the CPU machine does not have: GPU generations (mocked device properties),
pinned memory, host syncs, random states per process."""
from __future__ import annotations

import collections
import random
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import sertool
from sertool.runtime import random_state
from sertool.runtime.precision import resolve_amp
from sertool.training import loop
from tests.cases import case
from tests.corpus_files import write_learnable_corpus
from tests.systems import small_config

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


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_learnable_corpus(tmp_path_factory.mktemp("runtime") / "c", per_split={"Train": 16, "Development": 4})


HOST_READS = ("item", "tolist", "__float__")  # each waits for the GPU when its tensor is on one


@case("training", "reading the loss on the host (was: once per micro-batch, each read stalling the GPU)",
      "one read of the step's loss parts and one of its gradient norm per optimiser step, whatever `--accum-steps`")
def test_the_loop_reads_values_from_the_device_once_per_optimiser_step(corpus, tmp_path, monkeypatch):
    """Counts the reads of tensor values that sertool's own code makes during optimiser steps (the optimiser's
    reads of its CPU step counters are not host syncs): accumulating 4 micro-batches reads as often as 1."""
    package = str(Path(sertool.__file__).parent)
    reads: collections.Counter[str] = collections.Counter()
    stepping = {"now": False, "steps": 0}
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if stepping["now"] and caller.startswith(package):
                reads[f"{_name} in {Path(caller).name}"] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    real_step = loop._Run._optimizer_step

    def optimizer_step(self, group):
        stepping["now"] = True
        try:
            return real_step(self, group)
        finally:
            stepping["now"] = False
            stepping["steps"] += 1

    monkeypatch.setattr(loop._Run, "_optimizer_step", optimizer_step)
    per_step = {}
    for accum_steps in (1, 4):
        reads.clear()
        stepping["steps"] = 0
        loop.train(small_config(corpus, accum_steps=accum_steps, batch_size=2, epochs=1), tmp_path / str(accum_steps))
        per_step[accum_steps] = {where: count / stepping["steps"] for where, count in reads.items()}
    assert per_step[4] == per_step[1], per_step
    assert sum(per_step[4].values()) <= 2, per_step


def _draws() -> tuple:
    """One draw from each global generator a training process uses."""
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), random.random()


def test_each_rank_restores_its_own_random_states_and_another_world_size_reseeds():
    cpu = torch.device("cpu")
    random_state.seed_process(7, rank=0)
    rank_0 = _draws()
    random_state.seed_process(7, rank=1)
    assert _draws() != rank_0  # seed + rank: the ranks' dropout and augmentation differ
    saved = {"world_size": 2, "ranks": [None, random_state.process_state(cpu)]}
    expected = _draws()
    random_state.seed_process(7, rank=0)
    assert random_state.restore_process_state(saved, rank=1, world_size=2, device=cpu, seed=7) is None
    assert _draws() == expected
    warning = random_state.restore_process_state(saved, rank=0, world_size=1, device=cpu, seed=7)
    assert warning is not None and "2 processes and this run has 1" in warning and "seed + rank" in warning
    assert _draws() == rank_0
