"""Training curves: a run folder's ``metrics.jsonl`` as a figure (``curves.png``, ``sertool plot``).

The figure has one panel for the training loss and one per validation score (CCC of arousal, valence,
dominance and their average), all over optimiser steps, so that runs of different epoch lengths line up.
Several runs overlay in the same panels, one colour each. matplotlib is optional (setup.cfg's extra
``plot``) and imported only here, on an Agg canvas of its own (no global backend, no window).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sertool.core.constants import METRICS_NAME
from sertool.core.errors import SertoolError, missing_package
from sertool.data.records import ATTRIBUTES
from sertool.guards.outputs import OutputPlan
from sertool.guards.reads import MAX_TABLE_BYTES, read_user_text

CURVES_NAME = "curves.png"
SCORES = (*ATTRIBUTES, "average")


@dataclass
class Curves:
    """The numbers of one run's ``metrics.jsonl`` that the figure draws."""

    name: str
    train_steps: list[int] = field(default_factory=list)
    train_loss: list[float | None] = field(default_factory=list)  # None: a skipped (non-finite) step
    valid_steps: list[int] = field(default_factory=list)
    valid_ccc: dict[str, list[float | None]] = field(default_factory=lambda: {name: [] for name in SCORES})
    valid_split: str | None = None  # recorded since the records carry it; older files do not say
    valid_utterances: int | None = None


def read_curves(run_dir: str | Path, *, name: str | None = None) -> Curves:
    """Read ``run_dir/metrics.jsonl`` (any sertool version's: only ``type``, ``step`` and the scores are
    needed, so the epoch convention of older files does not matter); lines that are not JSON records, such
    as a torn last line, are skipped.

    Raises:
        SertoolError: no metrics.jsonl in ``run_dir``, or it holds no training or validation record.
    """
    run_dir = Path(run_dir)
    path = run_dir / METRICS_NAME
    try:
        records = read_records(path)
    except SertoolError as error:
        raise SertoolError(f"{error}; is {run_dir} a run folder?") from None
    curves = Curves(name or run_dir.name)
    for record in records:
        if record.get("type") == "train" and not record.get("skipped"):
            curves.train_steps.append(record["step"])
            curves.train_loss.append(_number(record.get("loss_total")))
        elif record.get("type") == "valid":
            curves.valid_steps.append(record["step"])
            for score in SCORES:
                curves.valid_ccc[score].append(_number(record.get(f"ccc_{score}")))
            curves.valid_split = record.get("split", curves.valid_split)
            curves.valid_utterances = record.get("utterances", curves.valid_utterances)
    if not curves.train_steps and not curves.valid_steps:
        raise SertoolError(f"{path}: no training or validation record to plot")
    return curves


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, in order: each JSON object with an integer ``step``; other lines, such
    as a torn last line of a killed run, are skipped.

    Raises:
        SertoolError: the file cannot be read.
    """
    records = []
    for line in read_user_text(path, what="training log", max_bytes=MAX_TABLE_BYTES, errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def plot_curves(runs: Sequence[Curves], handle: IO[bytes], *, title: str | None = None) -> None:
    """Draw ``runs`` into one PNG written to ``handle``: training loss and validation CCC per score over
    optimiser steps.

    Each validation panel names its split and utterance count where the records say them (the same for
    every run; otherwise each run's legend entry says its own).

    Raises:
        SertoolError: matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise missing_package("matplotlib", needed_for="training curves") from None
    figure = Figure(figsize=(15, 7.5), dpi=100, layout="constrained")
    axes = figure.subplots(2, 3).ravel()
    validated_on = {_validation_set(run) for run in runs}
    shared = validated_on.pop() if len(validated_on) == 1 else None
    for index, run in enumerate(runs):
        colour = f"C{index % 10}"
        label = run.name if shared is not None else f"{run.name} ({_validation_set(run)})"
        axes[0].plot(run.train_steps, _nan(run.train_loss), color=colour, label=label, linewidth=1.2)
        for axis, score in zip(axes[1:5], SCORES, strict=True):
            axis.plot(run.valid_steps, _nan(run.valid_ccc[score]), color=colour, marker="o", markersize=3,
                      label=label)
    axes[0].set_title("training loss (total, per optimiser step)")
    for axis, score in zip(axes[1:5], SCORES, strict=True):
        axis.set_title(f"validation CCC, {score}" + (f" — {shared}" if shared else ""))
    for axis in axes[:5]:
        axis.set_xlabel("optimiser step")
        axis.grid(alpha=0.3)
    axes[5].axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    axes[5].legend(handles, labels, loc="center", frameon=False)
    if title:
        figure.suptitle(title)
    FigureCanvasAgg(figure).print_png(handle)


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, *, force: bool = False) -> Path:
    """``sertool plot``: the curves of every run in ``run_dirs`` overlaid in one PNG at ``out``, each named
    as given.

    Raises:
        SertoolError: ``out`` exists and ``force`` is not set, a folder has no readable metrics.jsonl, or
            matplotlib is not installed.
    """
    outputs = OutputPlan(force=force)
    path = outputs.file(out, flag="--out")
    assert path is not None, "--out is required"
    runs = [read_curves(run_dir, name=str(run_dir)) for run_dir in run_dirs]
    with outputs.writing(path, "wb") as handle:
        plot_curves(runs, handle)
    return path


def _validation_set(run: Curves) -> str:
    """"Development, 50 utterances", or "validation set not recorded" for older files."""
    if run.valid_split is None:
        return "validation set not recorded"
    count = f", {run.valid_utterances:,} utterances" if run.valid_utterances is not None else ""
    return f"{run.valid_split}{count}"


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _nan(values: Sequence[float | None]) -> list[float]:
    """None as NaN: matplotlib leaves a gap there instead of joining across a missing value."""
    return [float("nan") if value is None else value for value in values]
