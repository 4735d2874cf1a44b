"""Child process of benchmark 5: train a fixed number of steps with ``sertool.training.loop.train``, then
print this process's peak resident memory as one JSON line.

The peak is ``VmHWM`` of ``/proc/self/status``: the high-water mark of this program's own memory.
``getrusage``'s ``ru_maxrss`` is no use here, because Linux carries it over from the forked copy of the
parent, so a child of a large parent reports the parent's size.

Usage: ``python bench/memory_child.py MANIFEST RUN_DIR``. Every epoch undersamples to the same number of
utterances (``max_per_class``) in fixed-size batches, so a larger corpus means more rows to choose from,
never more or bigger steps.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from sertool.core.config import Config
from sertool.training.loop import train

MAX_PER_CLASS = 3  # with the benchmark corpus' 4 classes: 12 utterances per epoch
BATCH_SIZE = 4  # 3 optimiser steps per epoch
EPOCHS = 1


def child_config(manifest: str) -> Config:
    """An fbank system at its default size, trained for ``EPOCHS`` epochs of undersampled, fixed batches."""
    config = Config()
    config.data.corpus = manifest
    config.data.num_workers = 0  # one process: ru_maxrss then covers everything
    config.model.backbone = "fbank"
    config.train.sampling = "undersample"
    config.train.max_per_class = MAX_PER_CLASS
    config.train.batch_size = BATCH_SIZE
    config.train.accum_steps = 1
    config.train.epochs = EPOCHS
    return config


def peak_rss_kb() -> int:
    """This process's resident-memory high-water mark in KiB (``VmHWM``).

    Raises:
        RuntimeError: no ``/proc`` (not Linux); the benchmark needs it.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(manifest: str, run_dir: str) -> None:
    result = train(child_config(manifest), run_dir, force=True, device="cpu")
    print(json.dumps({"max_rss_kb": peak_rss_kb(), "steps": result.steps}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
