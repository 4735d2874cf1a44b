"""Multi-GPU and multi-node training through torchrun and DistributedDataParallel.

``torchrun --nproc-per-node N -m sertool train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; without them
the run is a single process. The gloo backend serves CPUs (and the tests), nccl serves GPUs.

Two kinds of waiting for the other ranks:

- the collectives of training (the gradient all-reduce, the stop and skip decisions, the validation's
  gather, the end) wait at most ``--ddp-timeout-s`` (``join``), long enough for rank 0 to write a
  checkpoint of several GB while the others wait at the next one;
- the set-up's waits (``wait_for_every_rank``: after each rank's share of a cache fill, before the first
  collective) have no limit: one rank's share of ASR, frames or statistics can take hours longer than
  another's. A rank that dies meanwhile ends the job through torchrun.
"""
from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from sertool.core.config import DEFAULT_DEVICE
from sertool.core.devices import select_device
from sertool.core.errors import SertoolError

Item = TypeVar("Item")


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0


# How long the set-up may wait for a rank, where a limit is unavoidable (the rendezvous of ``join``): no
# practical limit, as for ``wait_for_every_rank``.
SETUP_LIMIT = datetime.timedelta(days=7)


@dataclass
class _Job:
    """The process group this process joined: its collectives' limit, and the store of the set-up's waits."""

    timeout_s: float
    store: dist.Store
    waits: int = 0  # wait_for_every_rank calls so far: each one counts the ranks under a key of its own


_job: _Job | None = None


def setup(device: str = DEFAULT_DEVICE) -> Distributed:
    """Where this process stands in the job torchrun describes (if any), on its device; ``join`` then joins
    the job's process group.

    Args:
        device: "auto" (this rank's GPU when CUDA is available, else the CPU), "cpu", or "cuda".
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = select_device(device, local_rank=local_rank)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)


def join(context: Distributed, *, timeout_s: float) -> None:
    """Join the process group of the job (a no-op in a single process, or where the group exists already).

    Args:
        context: this process's place in the job (``setup``).
        timeout_s: how long a collective waits for the other ranks before it fails (``--ddp-timeout-s``;
            PyTorch's default is 10 minutes for NCCL, shorter than rank 0 may take to write a checkpoint).
    """
    global _job
    if not context.enabled or dist.is_initialized():
        return
    # The rendezvous through torchrun's store, as init_process_group would make it, so that the set-up's
    # waits can count the ranks in that store without a collective's time limit.
    store, rank, world_size = next(dist.rendezvous("env://", timeout=SETUP_LIMIT))
    store.set_timeout(SETUP_LIMIT)
    dist.init_process_group(backend="nccl" if context.device.type == "cuda" else "gloo",
                            store=dist.PrefixStore("default_pg", store), rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    _job = _Job(timeout_s=timeout_s, store=dist.PrefixStore("sertool", store))


def wait_for_every_rank(context: Distributed) -> None:
    """Return once every rank has called this as often as this rank has, however long that takes.

    For the set-up, where the ranks part for as long as their shares of a cache fill take: a barrier would
    fail the job after ``--ddp-timeout-s``. The wait polls the job's store from Python, so a stop signal
    still stops the waiting rank.
    """
    if not context.enabled:
        return
    if _job is None:  # a process group sertool did not create: its store is not sertool's to use
        dist.barrier()
        return
    _job.waits += 1
    key = f"wait-{_job.waits}"
    arrived = _job.store.add(key, 1)
    pause_s = 0.01
    while arrived < context.world_size:
        time.sleep(pause_s)
        pause_s = min(2 * pause_s, 1.0)
        arrived = _job.store.add(key, 0)


def explained(error: RuntimeError) -> Exception:
    """``error`` as one line (a ``SertoolError``) where it is a collective that waited too long for another
    rank or lost one; any other error (and any error in a single process) as it is."""
    if _job is None:
        return error
    text = str(error).lower()
    if "timed out" in text or "timeout" in text:
        return SertoolError(f"a rank waited longer than --ddp-timeout-s {_job.timeout_s:g} s for the others (e.g. "
                            "while rank 0 wrote a checkpoint to slow storage), so the job failed: give a larger "
                            "--ddp-timeout-s (it may be given with --resume)")
    if "closed by peer" in text or "reset by peer" in text:
        return SertoolError("another rank of this job stopped (its own message says why), so this one stops too")
    return error


def barrier(context: Distributed) -> None:
    """Wait for every rank (at most ``--ddp-timeout-s``). Called before leaving the process group after a run
    that ended well (a rank that tears gloo down while another still writes its files can abort the process:
    "terminate called without an active exception"), and before a stop, until rank 0 has written last.pt."""
    if context.enabled:
        dist.barrier()


def teardown() -> None:
    """Leave the process group (a no-op in a single process)."""
    global _job
    if dist.is_initialized():
        dist.destroy_process_group()
    _job = None


def all_gather_objects(value, context: Distributed) -> list:
    """Every rank's ``value``, in rank order (just ``[value]`` in a single process)."""
    if not context.enabled:
        return [value]
    gathered: list = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def any_rank(flag: bool, context: Distributed) -> bool:
    """True if ``flag`` is True on any rank, so that every rank takes the same branch."""
    return any_rank_each([flag], context)[0]


def any_rank_each(flags: Sequence[bool], context: Distributed) -> list[bool]:
    """For each of ``flags``, whether it is True on any rank: several decisions in one all-reduce."""
    if not context.enabled:
        return list(flags)
    tensor = torch.tensor([float(flag) for flag in flags], device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(value) for value in tensor.tolist()]


def from_main(decide: Callable[[], Item], context: Distributed) -> Item:
    """What ``decide()`` returns on rank 0, on every rank (only rank 0 calls it): for a decision that every
    rank must take alike, made once rather than on each rank from data or arithmetic that may differ."""
    if not context.enabled:
        return decide()
    box: list = [decide() if context.is_main else None]
    dist.broadcast_object_list(box, src=0, device=context.device)
    return box[0]


def fill_in_shares(fill: Callable[[Sequence[Item]], object], items: Sequence[Item], context: Distributed) -> None:
    """Under DDP, split the filling of a disk cache across the ranks: each rank calls ``fill`` (which computes
    and writes only what the cache lacks) on its share, every ``world_size``-th item, so that each item is
    computed once in the job; returns when every rank's share is on disk. The caller then reads all of
    ``items`` (a share another rank could not write is computed then). One process: nothing to do.
    """
    if context.enabled:
        fill(list(items)[context.rank::context.world_size])
        wait_for_every_rank(context)
