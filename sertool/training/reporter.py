"""How the training loop reports progress; import-light, so the console can subclass it without torch.

Besides the terminal's reporter, the experiment trackers are reporters (``--tensorboard``: ``training.tensorboard``,
``--mlflow``: ``training.mlflow_tracking``); ``step_scalars`` and ``validation_scalars`` name the curves they draw,
alike in each.
"""
from __future__ import annotations

import math
from typing import Any

# Per-step numbers drawn as curves besides the losses (``loss_*``); the rest of a step's stats (batch counters,
# timing, the batch's own CCCs) are not curves.
_STEP_SCALARS = ("lr", "grad_norm")


class Reporter:
    """Where the loop reports progress. This base says nothing (tests, library use); the CLI passes
    ``sertool.cli.console.RichTrainReporter``, which overrides each method."""

    def progress(self, task: str, done: int, total: int) -> None:
        """While a long set-up step runs (reading audio headers, transcripts from ASR), before ``start``:
        ``done`` of ``total`` items of ``task``."""

    def start(self, summary: dict[str, Any]) -> None:
        """Once, before the first step: sizes, device, data report, class counts, the run's planned
        ``total_steps``, the run folder (``run_dir``) and the resolved ``config`` (a ``Config``)."""

    def epoch(self, epoch: int, total_batches: int, done_batches: int) -> None:
        """At the start of each epoch (``done_batches`` > 0 when resuming mid-epoch)."""

    def step(self, stats: dict[str, Any]) -> None:
        """After each optimiser step: losses, learning rate, timing; ``logged``: whether metrics.jsonl recorded
        the step (every ``--log-every-steps`` steps and at each epoch's end)."""

    def validation(self, metrics: dict[str, Any]) -> None:
        """After each validation: CCC per attribute and whether it improved."""

    def message(self, text: str) -> None:
        """Anything else worth a line (e.g. a skipped clip)."""

    def finish(self, result: Any) -> None:
        """Once, at the end, with the ``TrainResult``."""

    def close(self) -> None:
        """When the run ends, however it ends (an error, a stop): end anything still on screen."""


class Reporters(Reporter):
    """Several reporters as one: each hook is passed on to every reporter, in order (e.g. the terminal's
    and ``--tensorboard``'s)."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = reporters

    def progress(self, task: str, done: int, total: int) -> None:
        for reporter in self.reporters:
            reporter.progress(task, done, total)

    def start(self, summary: dict[str, Any]) -> None:
        for reporter in self.reporters:
            reporter.start(summary)

    def epoch(self, epoch: int, total_batches: int, done_batches: int) -> None:
        for reporter in self.reporters:
            reporter.epoch(epoch, total_batches, done_batches)

    def step(self, stats: dict[str, Any]) -> None:
        for reporter in self.reporters:
            reporter.step(stats)

    def validation(self, metrics: dict[str, Any]) -> None:
        for reporter in self.reporters:
            reporter.validation(metrics)

    def message(self, text: str) -> None:
        for reporter in self.reporters:
            reporter.message(text)

    def finish(self, result: Any) -> None:
        for reporter in self.reporters:
            reporter.finish(result)

    def close(self) -> None:
        for reporter in self.reporters:
            reporter.close()


def step_scalars(stats: dict[str, Any]) -> dict[str, float]:
    """The curves of a training step (a ``Reporter.step``'s stats or a metrics.jsonl train record), by tag:
    ``train/loss_total``, ``train/lr``, ... Only finite numbers; none for a skipped (non-finite) step."""
    if stats.get("skipped"):
        return {}
    return {f"train/{key}": value for key, value in stats.items()
            if (key.startswith("loss_") or key in _STEP_SCALARS) and _finite(value)}


def validation_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The curves of a validation (a ``Reporter.validation``'s record, as metrics.jsonl has it), by tag: the CCC of
    each score under the validation split's name, ``Development/ccc_arousal``, ... Only finite numbers."""
    split = metrics.get("split", "valid")
    return {f"{split}/{key}": value for key, value in metrics.items() if key.startswith("ccc_") and _finite(value)}


def _finite(value: Any) -> bool:
    """A real number to draw (not a bool, not None, NaN or infinite)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
