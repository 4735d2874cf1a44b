"""Child process of benchmark 5: train a fixed number of steps with ``sertool.training.loop.train``, then
print peak memory as one JSON line.

``max_rss_kb`` is ``VmHWM`` of ``/proc/self/status``: the high-water mark of this process's own memory.
``getrusage``'s ``ru_maxrss`` is no use here, because Linux carries it over from the forked copy of the
parent, so a child of a large parent reports the parent's size. With loader workers (``--workers``), the
whole process tree (this process and the training loader's workers) is also measured after every optimiser
step, when every worker is alive and has read its first batches, and the highest sums are reported:
``tree_pss_kb``, the memory the run really uses (a page shared by several processes counted once, in shares),
and ``tree_rss_kb``, what a job scheduler that adds up its processes' RSS reports (a page shared by the run and
its forked workers counted in every one of them). Sampling at the steps, not on a clock, measures both
corpora at the same moments of the run.

Usage: ``python bench/memory_child.py MANIFEST RUN_DIR [--wavlm DIR] [--workers N]``. Every epoch undersamples
to the same number of utterances (``max_per_class``) in batches of the same size, so a larger corpus means
more rows to choose from, never more or bigger steps.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from sertool.core.config import Config
from sertool.training.loop import train
from sertool.training.reporter import Reporter

MAX_PER_CLASS = 3  # with the benchmark corpus' 4 classes: 12 utterances per epoch
BATCH_SIZE = 4  # 3 optimiser steps per epoch
EPOCHS = 1


def child_config(manifest: str, *, wavlm: str | None = None, workers: int = 0) -> Config:
    """An fbank system at its default size (or the tiny WavLM in ``wavlm``, in duration-bucketed batches of
    ``BATCH_SIZE`` clips' seconds), trained for ``EPOCHS`` epochs of undersampled batches."""
    config = Config()
    config.data.corpus = manifest
    config.data.num_workers = workers
    config.train.sampling = "undersample"
    config.train.max_per_class = MAX_PER_CLASS
    config.train.accum_steps = 1
    config.train.epochs = EPOCHS
    if wavlm is None:
        config.model.backbone = "fbank"
        config.train.batch_size = BATCH_SIZE
    else:  # every clip lasts the same: BATCH_SIZE clips fill max_batch_s
        config.model.backbone = "wavlm"
        config.model.backbone_path = wavlm
        config.model.head_hidden_dim = 64
        config.train.batch_size = 0
        config.train.max_batch_s = float(BATCH_SIZE)
        config.train.min_batch_items = BATCH_SIZE
    return config


def peak_rss_kb() -> int:
    """This process's resident-memory high-water mark in KiB (``VmHWM``).

    Raises:
        RuntimeError: no ``/proc`` (not Linux); the benchmark needs it.
    """
    value = _proc_field("/proc/self/status", "VmHWM:")
    if value is None:
        raise RuntimeError("no VmHWM in /proc/self/status")
    return value


def _proc_field(path: str, name: str) -> int | None:
    """The number (kB) after ``name`` in a ``/proc`` file; None where the process or the line is gone."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1])
    except OSError:  # the process ended between listing and reading
        return None
    return None


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from ``/proc/PID/task/*/children``)."""
    pids = [pid]
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return pids
    for thread in threads:
        try:
            children = Path(f"/proc/{pid}/task/{thread}/children").read_text().split()
        except OSError:
            continue
        for child in children:
            pids += _tree(int(child))
    return pids


class TreeAtSteps(Reporter):
    """After each optimiser step, the sums of PSS and RSS over this process and its descendants; the highest."""

    def __init__(self) -> None:
        self.pss_kb = self.rss_kb = self.processes = 0

    def step(self, stats: dict[str, Any]) -> None:
        rollups = [f"/proc/{pid}/smaps_rollup" for pid in _tree(os.getpid())]
        self.pss_kb = max(self.pss_kb, sum(_proc_field(path, "Pss:") or 0 for path in rollups))
        self.rss_kb = max(self.rss_kb, sum(_proc_field(path, "Rss:") or 0 for path in rollups))
        self.processes = max(self.processes, len(rollups))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest")
    parser.add_argument("run_dir")
    parser.add_argument("--wavlm", help="a tiny WavLM folder (default: fbank)")
    parser.add_argument("--workers", type=int, default=0, help="loader workers (default: one process)")
    args = parser.parse_args()
    tree = TreeAtSteps()
    result = train(child_config(args.manifest, wavlm=args.wavlm, workers=args.workers), args.run_dir, force=True,
                   device="cpu", reporter=tree)
    print(json.dumps({"max_rss_kb": peak_rss_kb(), "tree_pss_kb": tree.pss_kb, "tree_rss_kb": tree.rss_kb,
                      "processes": tree.processes, "steps": result.steps}))


if __name__ == "__main__":
    main()
