"""Child process of benchmark 12 and of tests/test_memory_plan.py: the memory plan of a run, then the run itself
(``sertool.training.loop.train``), both as one JSON line.

Measured: the resident high-water mark (``VmHWM`` of /proc/self/status, as ``memory_child.py`` reads it) above the
resident memory just before the run (after the plan, which has imported what the run's model needs): what the run
added to the process. Estimated: the plan's peak less the resident part of its baseline, the same quantity.

Usage: ``python bench/plan_child.py CONFIG_YAML RUN_DIR``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from memory_child import peak_rss_kb
from sertool.core.config import Config
from sertool.data.corpus import open_corpus
from sertool.training.loop import train
from sertool.training.memory_plan import CPU_RUNTIME_BYTES, plan_memory, resident_bytes
from sertool.training.setup import checked_new_run
from sertool.training.setup_run import select_training_data, training_sampler


def main(config_yaml: str, run_dir: str) -> None:
    config = checked_new_run(Config.from_yaml(Path(config_yaml)))
    assert config.data.corpus is not None
    selection = select_training_data(config, open_corpus(config.data.corpus).utterances)
    plan = plan_memory(config, selection.train, selection.valid, sampler=training_sampler(config, selection.train),
                       device=torch.device("cpu"))
    before = resident_bytes()
    train(config, run_dir, force=True, device="cpu")
    measured = peak_rss_kb() * 1024 - before
    chosen = plan.chosen
    # The plan's baseline is this process's resident memory and what computing will add to it whatever the model
    # (CPU_RUNTIME_BYTES): the measured figure holds the latter.
    estimated = chosen.peak_bytes - plan.baseline_bytes + CPU_RUNTIME_BYTES
    print(json.dumps({"measured_bytes": measured, "estimated_bytes": estimated, "baseline_bytes": before,
                      "weights": plan.weight_bytes, "gradients": plan.gradient_bytes,
                      "optimizer": plan.optimizer_bytes, "activations": chosen.activation_bytes,
                      "transient": chosen.transient_bytes, "validation": chosen.validation_bytes,
                      "phase": chosen.phase, "items": chosen.batch.items, "longest_s": chosen.batch.longest_s}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
