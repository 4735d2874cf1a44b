"""What a training run has done so far (``TrainState``, which ``last.pt`` keeps) and how it ended."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any


class Stop(str, Enum):
    """Why a run ended (a str, so that summary.json and checkpoints hold its plain value)."""

    FINISHED = "finished"  # --epochs or --max-steps reached
    EARLY_STOPPING = "early stopping"  # --patience validations without improvement

    def __str__(self) -> str:
        return self.value


@dataclass
class TrainResult:
    """How a run ended."""

    run_dir: Path
    best: dict[str, float]  # CCC per attribute and "average" of best.pt, on the validation split
    best_step: int
    steps: int
    stopped: Stop
    skipped_steps: int = 0  # non-finite losses or gradients
    skipped_audio: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # every validation
    collapsed: list[str] = field(default_factory=list)  # attributes near-constant at best.pt's validation


# The fields ``state_dict`` saves, in the order of last.pt's "progress" (runs written before TrainState read alike).
_SAVED = ("step", "epoch", "stopped", "best", "best_step", "best_per_attribute", "validations_without_improvement",
          "nonfinite_in_a_row", "skipped_steps", "skipped_audio", "history")


@dataclass
class TrainState:
    """The progress of a run: everything the loop changes but the weights, the optimiser, the schedule and the
    random states, which ``last.pt`` keeps beside it (``training.checkpointing``).

    ``state_dict`` holds plain types only: checkpoints are read with ``torch.load(weights_only=True)``, which
    loads no Enum. ``batches_in_epoch`` is not in it: the sampler's own state holds the position in the epoch.
    """

    step: int = 0  # optimiser steps taken (metrics.jsonl counts them from 1: the step just taken)
    epoch: int = 0  # the current epoch, from 0 (metrics.jsonl counts epochs from 1)
    batches_in_epoch: int = 0  # batches of the current epoch trained on (the loader's workers run ahead)
    stopped: Stop | None = None  # set once the run is over
    best: dict[str, float] = field(default_factory=dict)  # best.pt's validation scores
    best_step: int = -1
    best_per_attribute: dict[str, float] = field(default_factory=dict)  # select_best="per-attribute"
    validations_without_improvement: int = 0  # early stopping's count (--patience)
    nonfinite_in_a_row: int = 0  # skipped steps in a row (--max-nonfinite-steps)
    skipped_steps: int = 0  # every step skipped for a non-finite loss or gradient
    skipped_audio: list[str] = field(default_factory=list)  # "<id>: <reason>" of clips that failed to load
    history: list[dict[str, Any]] = field(default_factory=list)  # every validation's metrics.jsonl record

    def state_dict(self) -> dict[str, Any]:
        """What ``last.pt`` holds under ``training/progress`` (besides the data fingerprint)."""
        saved = {name: getattr(self, name) for name in _SAVED}
        saved["stopped"] = self.stopped.value if self.stopped is not None else None
        return saved

    def load_state_dict(self, progress: dict[str, Any]) -> None:
        """Take a ``state_dict`` back (``batches_in_epoch`` comes from the sampler's state).

        Raises:
            KeyError: a field is missing (a damaged checkpoint).
            ValueError: ``stopped`` is no ``Stop``.
        """
        for name in _SAVED:
            if name != "stopped":
                setattr(self, name, progress[name])
        self.stopped = Stop(progress["stopped"]) if progress.get("stopped") else None

    def checkpoint_key(self) -> tuple[Any, ...]:
        """What tells one saved state from the next (``last.pt`` is not written twice for the same state)."""
        return self.step, self.epoch, self.batches_in_epoch, len(self.history), self.stopped

    def epoch_of_last_step(self) -> int:
        """The epoch, counted from 1 as metrics.jsonl counts it, that the last step trained in: when that step
        ended an epoch, ``epoch`` already counts it."""
        return self.epoch if self.batches_in_epoch == 0 else self.epoch + 1
