"""Train on 2 DDP ranks in 2 processes (gloo on the CPU), with a fault put into either rank, and see how
each rank ended.

``run_ranks(config, run_dir, prepare=...)`` spawns the ranks; ``prepare(rank)`` (a module-level function,
so that it reaches the spawned process) runs in each before ``train``, to patch what that rank sees. The
result is each rank's end: its model state, steps, history, and its ``SertoolError`` line if the run
stopped with one. A rank that crashes, or ranks that wait for each other past ``timeout_s`` (a collective
one rank never enters), fail the test with what each rank printed.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from sertool.core.config import Config
from sertool.core.errors import SertoolError
from sertool.training import loop
from sertool.training.loop import train

WORLD_SIZE = 2
TIMEOUT_S = 240  # a tiny run takes well under a minute a rank, start-up included, on 2 shared cores


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _end_file(run_dir: str, rank: int) -> Path:
    return Path(f"{run_dir}.rank{rank}.end.pt")


def _worker(rank: int, port: int, config_dict: dict, run_dir: str,
            prepare: Callable[[int], None] | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    if prepare is not None:
        prepare(rank)
    end: dict[str, Any] = {}
    real_run = loop._Run.run

    def run_and_keep(self: loop._Run) -> loop.TrainResult:
        end["run"] = self
        return real_run(self)

    loop._Run.run = run_and_keep  # type: ignore[method-assign]
    try:
        result = train(Config.from_dict(config_dict), run_dir, device="cpu")
        end.update(steps=result.steps, stopped=str(result.stopped), history=result.history,
                   skipped_steps=result.skipped_steps, skipped_audio=result.skipped_audio)
    except SertoolError as error:  # the user's one line: the test checks that every rank says it
        end["error"] = str(error)
    except BaseException:
        # A rank that dies takes its peer down with it (gloo aborts): keep the first cause for the report.
        import traceback

        Path(f"{run_dir}.rank{rank}.error").write_text(traceback.format_exc())
        raise
    run = end.pop("run", None)
    if run is not None:
        end["state"] = {name: value.detach().clone() for name, value in run.model.state_dict().items()}
    end["ended_at"] = time.time()  # when this rank was done (compared with the files' times)
    torch.save(end, _end_file(run_dir, rank))


def run_ranks(config: Config, run_dir: Path, *, prepare: Callable[[int], None] | None = None,
              timeout_s: float = TIMEOUT_S, allow_dead: bool = False) -> list[dict[str, Any]]:
    """Train ``config`` into ``run_dir`` on 2 gloo ranks; each rank's end, in rank order.

    Each end holds ``state`` (the rank's model state dict, buffers included), ``ended_at`` (``time.time()``)
    and either ``steps``, ``stopped``, ``history``, ``skipped_steps`` and ``skipped_audio``, or ``error`` (the
    ``SertoolError`` line the rank stopped with). With ``allow_dead``, a rank that died of another error (a
    peer that stopped with one line takes gloo's connection with it) ends as ``{"died": last line}``
    instead of failing the test.
    """
    context = mp.start_processes(_worker, args=(_free_port(), config.to_dict(), str(run_dir), prepare),
                                 nprocs=WORLD_SIZE, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.0)):
            if time.monotonic() >= deadline:
                for process in context.processes:
                    if process.is_alive():
                        process.kill()
                pytest.fail(f"the DDP ranks did not finish in {timeout_s:.0f} s: they wait for each other")
    except (mp.ProcessExitedException, mp.ProcessRaisedException):
        errors = [path.read_text() for path in sorted(run_dir.parent.glob(f"{run_dir.name}.rank*.error"))]
        if not allow_dead:
            pytest.fail("a DDP rank died:\n" + "\n".join(errors or ["(no Python error: see the captured stderr)"]))
    ends = []
    for rank in range(WORLD_SIZE):
        end_file, error_file = _end_file(str(run_dir), rank), Path(f"{run_dir}.rank{rank}.error")
        if end_file.is_file():
            ends.append(torch.load(end_file, weights_only=False))
        else:
            lines = error_file.read_text().strip().splitlines() if error_file.is_file() else ["(no Python error)"]
            ends.append({"died": lines[-1]})
    return ends


def assert_ranks_agree(ends: list[dict[str, Any]]) -> None:
    """Every rank ended alike: the same weights and buffers (bit for bit), steps, history and error."""
    first, *others = ends
    apart = ("state", "ended_at")  # compared below / a time of each rank's own
    for other in others:
        assert {key: value for key, value in other.items() if key not in apart} == \
            {key: value for key, value in first.items() if key not in apart}
        assert other["state"].keys() == first["state"].keys()
        for name, value in first["state"].items():
            assert torch.equal(other["state"][name], value), f"{name} differs between the ranks"
