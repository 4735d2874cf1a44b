"""Multi-GPU and multi-node training through torchrun and DistributedDataParallel.

``torchrun --nproc-per-node N -m sertool train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; without them
the run is a single process. The gloo backend serves CPUs (and the tests), nccl serves GPUs.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from sertool.config import DEFAULT_DEVICE
from sertool.devices import select_device

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


def setup(device: str = DEFAULT_DEVICE) -> Distributed:
    """Join the process group torchrun describes (if any) and pick this process's device.

    Args:
        device: "auto" (this rank's GPU when CUDA is available, else the CPU), "cpu", or "cuda".
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = select_device(device, local_rank=local_rank)
    use_cuda = chosen.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(chosen)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)


def barrier(context: Distributed) -> None:
    """Wait for every rank. Called before leaving the process group after a run that ended well: a rank
    that tears gloo down while another still writes its files can abort the process ("terminate called
    without an active exception")."""
    if context.enabled:
        dist.barrier()


def teardown() -> None:
    """Leave the process group (a no-op in a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


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
        barrier(context)
