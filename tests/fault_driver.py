"""Run `sertool` with one fault injected at an exact point of training: a signal or ``kill -9``.

    python -m tests.fault_driver SIGNAL POINT N -- ARGS...

runs ``sertool ARGS...`` and sends SIGNAL (SIGINT, SIGTERM or SIGKILL) to the whole process group, as a
terminal's Ctrl-C or a cluster's scheduler does, the N-th time POINT is reached:

- ``loading``: the corpus is being read (N is ignored);
- ``step``: optimiser step N has been taken, before what follows it (checkpoint, the epoch's end,
  validation);
- ``saved``: ``last.pt`` holding step N has just been written;
- ``validation``: the N-th validation is running;
- ``checkpoint-write``: the N-th ``last.pt`` is written to its temporary file but not yet renamed.

Start it in a session of its own (``start_new_session=True``): the signal goes to its process group.
Under torchrun (``torchrun ... -m tests.fault_driver ...``) every rank runs the driver, in the session
torchrun gives each rank, so each rank signals its own group when it reaches POINT, as a scheduler signals
every process of a job; with ``FAULT_SIGNAL_LAUNCHER=1`` in the environment, rank 0 signals torchrun's
group too, which then forwards the signal to every rank (each rank gets it twice, as under a scheduler that
signals every process). With ``FAULT_SLOW_LAST_PT_S=S`` every ``last.pt`` takes S seconds more to write (a
checkpoint of several GB). Points are patched into ``sertool.training.loop`` only; nothing of sertool is
changed on disk.
"""
from __future__ import annotations

import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

SETTLE_S = 0.2  # after sending a catchable signal: let it arrive before the code goes on


def _fire(name: str) -> None:
    number = getattr(signal, name)
    os.killpg(0, number)
    if os.environ.get("FAULT_SIGNAL_LAUNCHER") and os.environ.get("RANK") == "0":
        os.killpg(os.getpgid(os.getppid()), number)
    time.sleep(SETTLE_S)


def install(signal_name: str, point: str, count: int) -> None:
    if point not in _POINTS:
        raise SystemExit(f"unknown point {point}")
    seen = {"n": 0}

    def reached() -> bool:
        seen["n"] += 1
        return seen["n"] == count

    _POINTS[point](functools.partial(_fire, signal_name), count, reached)


def _at_loading(fire: Callable[[], None], count: int, reached: Callable[[], bool]) -> None:
    from sertool.training import loop

    real_open = loop.open_corpus

    def open_corpus(*args, **kwargs):
        fire()
        return real_open(*args, **kwargs)

    loop.open_corpus = open_corpus


def _at_step(fire: Callable[[], None], count: int, reached: Callable[[], bool]) -> None:
    from sertool.training import loop

    real_step = loop._Run._optimizer_step

    def optimizer_step(self, group):
        stats = real_step(self, group)
        if self.step + 1 == count:
            fire()
        return stats

    loop._Run._optimizer_step = optimizer_step


def _at_saved(fire: Callable[[], None], count: int, reached: Callable[[], bool]) -> None:
    from sertool.training import loop

    real_save = loop.save_checkpoint

    def save_checkpoint(payload, path):
        real_save(payload, path)
        if Path(path).name == "last.pt" and payload["step"] == count:
            fire()

    loop.save_checkpoint = save_checkpoint


def _at_validation(fire: Callable[[], None], count: int, reached: Callable[[], bool]) -> None:
    from sertool.training import loop

    real_run_model = loop.run_model

    def run_model(*args, **kwargs):
        if reached():
            fire()
        return real_run_model(*args, **kwargs)

    loop.run_model = run_model


def _at_checkpoint_write(fire: Callable[[], None], count: int, reached: Callable[[], bool]) -> None:
    from sertool.guards import outputs

    real_fsync = outputs.os.fsync

    def fsync(descriptor):
        real_fsync(descriptor)
        if Path(os.readlink(f"/proc/self/fd/{descriptor}")).name.startswith(".last.pt.") and reached():
            fire()

    outputs.os.fsync = fsync


# Each point patches one function of sertool: given how to fire the fault, N, and a counter that says
# whether this call is the N-th.
_POINTS: dict[str, Callable[[Callable[[], None], int, Callable[[], bool]], None]] = {
    "loading": _at_loading,
    "step": _at_step,
    "saved": _at_saved,
    "validation": _at_validation,
    "checkpoint-write": _at_checkpoint_write,
}


def slow_last_pt(seconds: float) -> None:
    """Every ``last.pt`` takes ``seconds`` more to write, before its file is opened."""
    from sertool.training import loop

    real_save = loop.save_checkpoint

    def save_checkpoint(payload, path):
        if Path(path).name == "last.pt":
            time.sleep(seconds)
        real_save(payload, path)

    loop.save_checkpoint = save_checkpoint


def main() -> None:
    signal_name, point, count, separator, *args = sys.argv[1:]
    assert separator == "--", "usage: python -m tests.fault_driver SIGNAL POINT N -- ARGS..."
    if os.environ.get("FAULT_SLOW_LAST_PT_S"):
        slow_last_pt(float(os.environ["FAULT_SLOW_LAST_PT_S"]))
    install(signal_name, point, int(count))
    from sertool.cli.commands import main as sertool_main

    sys.argv = ["sertool", *args]
    sertool_main()


if __name__ == "__main__":
    main()
