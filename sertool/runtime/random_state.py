"""The random number generators of a training process: how each rank is seeded, and the states ``last.pt``
keeps so that a resumed run draws what the uninterrupted one would have.

Under DDP some draws must be the same on every rank and others must differ:

- the same: which utterances an epoch uses and how they are batched (``EpochBatchSampler``), the data
  selection, and each item's crop and speed. Each comes from a generator of its own, seeded with the run's
  seed (and for an item, its epoch and index), so no process's state is involved. The initial weights too:
  DDP copies rank 0's to the others when it wraps the model.
- different: what a rank draws while it trains (dropout masks, SpecAugment, LayerDrop), from the process's
  global generators: torch's (the CPU's and the rank's GPU's), numpy's (transformers' wav2vec 2.0 family
  masks frames with it) and Python's. With one seed on every rank, each rank would drop the same units of
  its different utterances. So each rank seeds them with seed + rank: rank 0, like a single process, with
  the seed itself.

``last.pt`` holds every rank's states (gathered to rank 0); each rank of the resumed run takes its own.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

NUMPY_GENERATOR = "MT19937"  # the only generator behind numpy's legacy global functions


def seed_process(seed: int, rank: int = 0) -> None:
    """Seed this process's global generators (torch's on the CPU and every GPU, numpy's, Python's) for
    ``rank``: with ``seed + rank``."""
    value = seed + rank
    torch.manual_seed(value)
    # numpy's legacy seed takes 32-bit words: all of the value's bits, spread by a SeedSequence.
    np.random.seed(np.random.SeedSequence(value).generate_state(4))
    random.seed(value)


def process_state(device: torch.device) -> dict[str, Any]:
    """This process's generator states: tensors, numbers, lists and tuples (a checkpoint loads them with
    ``weights_only``). The GPU's is its own device's only, the one this rank draws from."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                  "position": int(numpy_state["state"]["pos"]), "has_gauss": int(numpy_state["has_gauss"]),
                  "gauss": float(numpy_state["gauss"])},
        "python": random.getstate(),
    }


def restore_process_state(saved: dict[str, Any], *, rank: int, world_size: int, device: torch.device,
                          seed: int) -> str | None:
    """Give this process the states its rank had when ``saved`` (``last.pt``'s ``rng``) was written.

    A checkpoint of another number of processes has no state for this rank, or not the one it would have
    had: every rank then seeds itself as a new run does (``seed_process``), and the warning returned says so.
    A GPU's state is restored on a GPU only (a run resumed on the CPU draws nothing from it).

    Args:
        saved: ``{"world_size": N, "ranks": [process_state() of each rank]}``; or, from sertool before it
            kept one state per rank, ``{"torch": ..., "cuda": [one state per visible GPU]}``, that of one
            process.
        rank, world_size: this process's place in the resumed job.
        device: this process's device.
        seed: the run's seed.

    Raises:
        KeyError, TypeError, ValueError, RuntimeError: ``saved`` is damaged.
    """
    if "ranks" not in saved:  # one process's, and its GPU was the first visible one
        first_gpu = saved["cuda"][0] if saved["cuda"] else None
        saved = {"world_size": 1, "ranks": [{"torch": saved["torch"], "cuda": first_gpu}]}
    if saved["world_size"] != world_size:
        seed_process(seed, rank)
        return (f"last.pt holds the random states of {saved['world_size']} processes and this run has {world_size}: "
                "each process draws from seed + rank again, so its dropout and augmentation from here on are not "
                "those the uninterrupted run would have drawn")
    state = saved["ranks"][rank]
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    # A state from before sertool kept numpy's and Python's leaves them as seeded.
    if "numpy" in state:
        numpy_state = state["numpy"]
        key = numpy_state["key"].numpy().astype(np.uint32)
        np.random.set_state({"bit_generator": NUMPY_GENERATOR, "state": {"key": key, "pos": numpy_state["position"]},
                             "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]})
    if "python" in state:
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
    return None
