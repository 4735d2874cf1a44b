"""``sertool train --tensorboard``: the loop's reports as TensorBoard scalars, through the ``Reporter`` hook.

TensorBoard is optional (setup.cfg's extra ``tensorboard``); without it, asking for it is an error before
any work. Events go to ``<run folder>/tensorboard/``, one file per (re)start of the run: a resumed run
appends a new file, and steps between the resumed checkpoint and the stop may show twice (metrics.jsonl,
which is trimmed on resume, is the record).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sertool.core.errors import missing_package
from sertool.training.reporter import Reporter, step_scalars, validation_scalars

TENSORBOARD_DIR = "tensorboard"


class TensorBoardReporter(Reporter):
    """Training loss parts, learning rate and gradient norm per logged step; validation CCC per score."""

    def __init__(self, run_dir: str | Path) -> None:
        """Check that TensorBoard is installed; the writer opens when the run starts.

        Raises:
            SertoolError: the tensorboard package is not installed (naming the install command).
        """
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise missing_package("tensorboard", needed_for="--tensorboard") from None
        self._writer_class = SummaryWriter
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self._writer: Any = None  # a SummaryWriter once the run starts

    def start(self, summary: dict[str, Any]) -> None:
        self._writer = self._writer_class(log_dir=str(self.log_dir))

    def step(self, stats: dict[str, Any]) -> None:
        if self._writer is not None:
            for tag, value in step_scalars(stats).items():
                self._writer.add_scalar(tag, value, stats["step"])

    def validation(self, metrics: dict[str, Any]) -> None:
        if self._writer is not None:
            for tag, value in validation_scalars(metrics).items():
                self._writer.add_scalar(tag, value, metrics["step"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
