"""Child process of benchmark 12, of ``bench/real_size.py`` and of tests/test_memory_plan.py: the memory plan of a
run, then the run itself (``sertool.training.loop.train``), both as one JSON report.

Measured: the resident high-water mark (``VmHWM`` of /proc/self/status, as ``memory_child.py`` reads it) above the
resident memory just before the run (after the plan, which has imported what the run's model needs): what the run
added to the process. Estimated: the plan's peak less the resident part of its baseline, the same quantity. Beside
them: the high-water mark itself, the run's wall time and steps, and with ``--feature-cache`` the fill's time and
the high-water mark at its end (``PhaseClock``).

Under torchrun every rank plans its own share of the micro-batches and reports on its own.

Usage: ``python bench/plan_child.py CONFIG_YAML RUN_DIR [REPORT_JSON]`` (without REPORT_JSON the report is printed;
under torchrun each rank writes REPORT_JSON with ``.rank<R>`` before its suffix).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from memory_child import peak_rss_kb
from sertool.core.config import Config
from sertool.data.corpus import open_corpus
from sertool.training.loop import train
from sertool.training.memory_plan import CPU_RUNTIME_BYTES, plan_memory, resident_bytes
from sertool.training.reporter import Reporter
from sertool.training.setup import checked_new_run
from sertool.training.setup_run import select_training_data, training_sampler

FILL_TASK = "feature cache"  # setup_run's progress task, and the start of its line once the cache is filled


class PhaseClock(Reporter):
    """When the feature cache's fill began and ended (seconds since ``started``) and the high-water mark at its end;
    when the run's first step began; the high-water mark at the end of each phase the run reports (its set-up, each
    step, each validation: ``marks``), which says in which phase the peak fell (rank 0 alone reports under DDP)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.fill_began_s: float | None = None
        self.fill: dict[str, Any] | None = None
        self.first_step_s: float | None = None
        self.marks: list[dict[str, Any]] = []

    def mark(self, phase: str) -> None:
        self.marks.append({"phase": phase, "at_s": time.perf_counter() - self.started,
                           "peak_rss_bytes": peak_rss_kb() * 1024})

    def progress(self, task: str, done: int, total: int) -> None:
        if task == FILL_TASK and self.fill_began_s is None:
            self.fill_began_s = time.perf_counter() - self.started

    def message(self, text: str) -> None:
        if text.startswith(FILL_TASK):
            ended_s = time.perf_counter() - self.started
            began_s = ended_s if self.fill_began_s is None else self.fill_began_s  # all cached: no progress
            self.fill = {"seconds": ended_s - began_s, "peak_rss_bytes": peak_rss_kb() * 1024, "line": text}

    def start(self, summary: dict[str, Any]) -> None:
        self.first_step_s = time.perf_counter() - self.started
        self.mark("set-up")

    def step(self, stats: dict[str, Any]) -> None:
        self.mark(f"step {stats['step']}")

    def validation(self, metrics: dict[str, Any]) -> None:
        self.mark("validation")


def main(config_yaml: str, run_dir: str, report_path: str | None = None) -> None:
    config = checked_new_run(Config.from_yaml(Path(config_yaml)))
    assert config.data.corpus is not None
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    selection = select_training_data(config, open_corpus(config.data.corpus).utterances)
    plan = plan_memory(config, selection.train, selection.valid, device=torch.device("cpu"),
                       sampler=training_sampler(config, selection.train, rank=rank, world_size=world_size))
    before = resident_bytes()
    started = time.perf_counter()
    clock = PhaseClock(started)
    result = train(config, run_dir, force=True, device="cpu", reporter=clock)
    clock.mark("the rest (last.pt)")
    wall_s = time.perf_counter() - started
    peak = peak_rss_kb() * 1024
    chosen = plan.chosen
    # The plan's baseline is this process's resident memory and what computing will add to it whatever the model
    # (CPU_RUNTIME_BYTES): the measured figure holds the latter.
    estimated = chosen.peak_bytes - plan.baseline_bytes + CPU_RUNTIME_BYTES
    report = {"measured_bytes": peak - before, "estimated_bytes": estimated, "baseline_bytes": before,
              "peak_rss_bytes": peak, "planned_peak_bytes": chosen.peak_bytes, "wall_s": wall_s,
              "setup_s": clock.first_step_s, "steps": result.steps, "fill": clock.fill, "marks": clock.marks, "rank": rank,
              "world_size": world_size, "weights": plan.weight_bytes, "gradients": plan.gradient_bytes,
              "optimizer": plan.optimizer_bytes, "activations": chosen.activation_bytes,
              "transient": chosen.transient_bytes, "validation": chosen.validation_bytes,
              "phase": chosen.phase, "items": chosen.batch.items, "longest_s": chosen.batch.longest_s}
    if report_path is None:
        print(json.dumps(report))
        return
    path = Path(report_path)
    if world_size > 1:
        path = path.with_name(f"{path.stem}.rank{rank}{path.suffix}")
    path.write_text(json.dumps(report), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:4])
