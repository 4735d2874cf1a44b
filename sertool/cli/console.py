"""Rich output shared by every command: tables to stdout, progress and messages to stderr."""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from sertool.core.constants import ATTRIBUTES, BEST_NAME, SCORE_NAMES, SUMMARY_NAME
from sertool.core.progress import Meter, PlainLines
from sertool.data.info import SplitSummary, class_order
from sertool.data.records import EMO_CLASSES
from sertool.data.report import LoadReport
from sertool.training.reporter import Reporter

# Tables go to stdout; when that is a file or pipe, rich would wrap them at 80 columns: use 120 there.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
# Messages on stderr are never hard-wrapped: a log file or a grep must see each message on one line.
err = Console(stderr=True, highlight=False, soft_wrap=True)

# How many individual problems to list before only counting them.
_MAX_LISTED_PROBLEMS = 10


class Bars:
    """Every progress bar of the process, on stderr, in one live rich display (rich allows one at a time, and
    steps nest: a validation inside a training epoch, an ensemble member's prediction pass).

    Bars are drawn only when stderr is a terminal. Where it is a pipe or a log file, each task prints a plain
    line every ``$SERTOOL_LOG_EVERY_S`` seconds instead (``sertool.core.progress.PlainLines``: no bar, no
    control codes). Nothing at all with ``silenced`` (``--quiet``). Installed as ``sertool.core.progress``'s
    display by the command line.
    """

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._open = 0
        self.silenced = False

    @property
    def drawing(self) -> bool:
        return err.is_terminal and not self.silenced

    @contextlib.contextmanager
    def bar(self, description: str, *, total: int | None = None, completed: int = 0) -> Iterator[Callable[..., None]]:
        """A transient bar; yields ``update(completed=..., total=..., stats=...)`` (rich's task fields)."""
        if not self.drawing:
            yield lambda **fields: None
            return
        if self._progress is None:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=err,
                                      transient=True)
            self._progress.start()
        progress = self._progress
        self._open += 1
        task = progress.add_task(description, total=total, completed=completed, stats="")
        try:
            yield lambda **fields: progress.update(task, **fields)
        finally:
            progress.remove_task(task)
            self._open -= 1
            if not self._open:
                progress.stop()
                self._progress = None

    @contextlib.contextmanager
    def __call__(self, description: str) -> Iterator[Callable[[int, int], None]]:
        """``sertool.core.progress.Display``: a bar whose ``(done, total)`` callback moves it, or off a terminal
        the plain lines of ``PlainLines``."""
        if not self.drawing and not self.silenced:
            with PlainLines()(description) as lines:
                yield lines
            return
        with self.bar(description) as update:
            yield lambda done, total: update(completed=done, total=total)

    def meter(self, label: str, **options) -> Meter | None:
        """Plain progress lines (``Meter(label, **options)``) where stderr is no terminal; None on a terminal,
        where bars are drawn instead, and with ``--quiet``."""
        return None if self.drawing or self.silenced else Meter(label, **options)

    def print(self, text: str, **kwargs) -> None:
        """A line on stderr above the bars (they stay below it)."""
        (self._progress.console if self._progress is not None else err).print(text, **kwargs)


BARS = Bars()


def show_progress(*, quiet: bool = False) -> None:
    """Show every long step's progress (``sertool.core.progress.task``) on stderr from now on, unless ``quiet``:
    bars on a terminal, plain lines elsewhere; model downloads show the hub's own bars when ours are drawn.

    Raises:
        SertoolError: ``$SERTOOL_LOG_EVERY_S`` is not a number of seconds (where plain lines are printed: said
            before any work).
    """
    from sertool.core import progress

    BARS.silenced = quiet
    if not (quiet or BARS.drawing):
        progress.log_every_s()
    progress.set_display(BARS)


def print_json(document) -> None:
    """A JSON document on stdout (``--json``): nothing else goes to stdout, so a pipe gets valid JSON."""
    from sertool.core.io import write_json_document

    write_json_document(document, sys.stdout)


def print_written(paths, *, as_json: bool = False) -> None:
    """One "wrote PATH" line per file; on stderr when stdout carries ``--json`` output."""
    for path in paths:
        (err if as_json else out).print(f"wrote {path}", markup=False)


def print_load_report(report: LoadReport) -> None:
    """The dropped rows and warnings of a corpus read: counts by reason and the first few items."""
    if not report.dropped and not report.warnings:
        return
    err.print(f"[bold]data:[/] {report.summary()}")
    for problem in (sorted(report.dropped, key=_file_and_line) + report.warnings)[:_MAX_LISTED_PROBLEMS]:
        err.print(f"  {problem}", markup=False)
    hidden = len(report.dropped) + len(report.warnings) - _MAX_LISTED_PROBLEMS
    if hidden > 0:
        err.print(f"  … and {hidden} more")


def _file_and_line(problem) -> tuple[str, int]:
    """Sort key: a problem's file, then its line number (``file:12`` before ``file:102``)."""
    file, _, line = problem.where.rpartition(":")
    return (file, int(line)) if line.isdigit() else (problem.where, 0)


def _ccc(value: float) -> str:
    """Four decimals, without a "-0.0000" for values that round to zero."""
    text = f"{value:.4f}"
    return "0.0000" if text == "-0.0000" else text


def print_corpus_summary(title: str, summaries: list[SplitSummary]) -> None:
    """Tables of `sertool data info`: splits, then classes per split."""
    splits = Table(title=title, title_justify="left")
    for column in ("split", "utterances", "hours", "seconds", "speakers", "M / F / ?", "labelled", "text", "O/X"):
        splits.add_column(column, justify="left" if column == "split" else "right")
    for summary in summaries:
        share = summary.with_transcript / summary.utterances if summary.utterances else 0.0
        genders = " / ".join(f"{summary.genders[key]:,}" for key in ("Male", "Female", "unknown"))
        splits.add_row(
            summary.name, f"{summary.utterances:,}", f"{summary.hours:.2f}",
            f"{summary.min_duration_s:.1f}–{summary.max_duration_s:.1f}", f"{summary.speakers:,}", genders,
            f"{summary.labelled:,}", f"{share:.0%}", f"{summary.no_class_share:.1%}",
            style="bold" if summary.name == "all" else None,
        )
    out.print(splits)
    out.print("seconds: shortest–longest utterance; text: share with a transcript; "
              "O/X: share of class O (other) or X (no agreement)", style="dim")

    classes = Table(title="EmoClass distribution (count and share of split)", title_justify="left")
    classes.add_column("class")
    for summary in summaries:
        classes.add_column(summary.name, justify="right")
    for code in class_order(summaries):
        name = EMO_CLASSES.get(code, "unknown")
        cells = [
            f"{summary.classes[code]:,} ({summary.classes[code] / summary.utterances:.1%})"
            if summary.utterances else "0"
            for summary in summaries
        ]
        classes.add_row(f"{code} {name}", *cells)
    out.print(classes)


def print_memory_plan(plan) -> None:
    """`sertool train --plan`: the model, the largest micro-batch, the device, then the estimated peak per precision
    with and without gradient checkpointing (``sertool.training.memory_plan.MemoryPlan``)."""
    from sertool.training.memory_plan import size

    for line in (plan.model_line(), plan.batch_line(), plan.device_line()):
        out.print(line)
    table = Table(title="estimated peak memory", title_justify="left")
    for column in ("precision", "checkpointing", "activations", "transient", "validation", "peak", "at"):
        table.add_column(column, justify="left" if column in ("precision", "checkpointing", "at") else "right")
    chosen = plan.chosen
    for estimate in plan.table:
        own = (estimate.precision, estimate.checkpointing) == (chosen.precision, chosen.checkpointing)
        table.add_row(estimate.precision, "on" if estimate.checkpointing else "off", size(estimate.activation_bytes),
                      size(estimate.transient_bytes), size(estimate.validation_bytes), size(estimate.peak_bytes),
                      estimate.phase + ("  ← this run" if own else ""), style="bold" if own else None)
    out.print(table)
    out.print(plan.summary(), soft_wrap=True)
    warning = plan.warning()
    if warning is not None:
        err.print(f"[yellow]warning:[/] {warning}")


def train_reporter(run_dir, *, tensorboard: bool, mlflow: bool) -> Reporter:
    """The terminal's reporter, and beside it the experiment trackers asked for, each checked now (installed; an
    MLflow server that answers): TensorBoard's with ``--tensorboard``, MLflow's with ``--mlflow``."""
    terminal = RichTrainReporter()
    trackers: list[Reporter] = []
    if tensorboard:
        from sertool.training.tensorboard import TensorBoardReporter

        trackers.append(TensorBoardReporter(run_dir))
    if mlflow:
        from sertool.training.mlflow_tracking import MlflowReporter

        trackers.append(MlflowReporter(run_dir, warn=terminal.message))
    if not trackers:
        return terminal
    from sertool.training.reporter import Reporters

    return Reporters(terminal, *trackers)


class RichTrainReporter(Reporter):
    """Training progress on the terminal: a bar per epoch with loss, lr, utterances/s and ETA, a line per
    validation, and a summary table at the end (the loop's ``Reporter``). Where stderr is no terminal (a log
    file), a plain line every ``$SERTOOL_LOG_EVERY_S`` seconds instead of the bars: the step of the run's
    total, loss, lr, utterances/s, elapsed and time left (``BARS.meter``)."""

    def __init__(self) -> None:
        self._bar: contextlib.ExitStack | None = None
        self._update: Callable[..., None] | None = None  # the epoch's bar
        self._task_update: Callable[[int, int], None] | None = None  # the set-up step's (``progress``)
        self._task_name: str | None = None  # the set-up step shown, None for an epoch
        self._started = 0.0
        self._meter: Meter | None = None  # off a terminal: the run's plain lines
        self._total_steps = 0
        self._utterances = 0  # trained on since ``start``: the lines' rate

    def progress(self, task: str, done: int, total: int) -> None:
        if self._task_update is None or self._task_name != task:
            self.close()
            self._bar = contextlib.ExitStack()
            self._task_update = self._bar.enter_context(BARS(task))
            self._task_name = task
        self._task_update(done, total)

    def start(self, summary: dict) -> None:
        import time

        self.close()
        self._started = time.perf_counter()
        resumed = f", resumed at step {summary['resumed_at_step']}" if summary["resumed_at_step"] else ""
        err.print(f"[bold]train:[/] {summary['train']:,} training and {summary['valid']:,} validation utterances; "
                  f"{summary['parameters']:,} trainable parameters on {summary['device']} "
                  f"(×{summary['world_size']}), AMP {summary['amp']}; {_length(summary)}, "
                  f"{summary['accum_steps']} per step{resumed}")
        print_load_report(summary["data"])
        counts = summary["classes"]
        known = list(EMO_CLASSES)
        order = sorted(counts, key=lambda code: known.index(code) if code in known else len(known))
        classes = " · ".join(f"{code or '?'} {counts[code]:,}" for code in order)
        err.print(f"training classes: {classes}")
        err.print(f"run folder: {summary['run_dir']}")
        self._meter = BARS.meter("train: step", rate_unit="utt", start=summary["resumed_at_step"])
        self._total_steps, self._utterances = summary["total_steps"], 0

    def epoch(self, epoch: int, total_batches: int, done_batches: int) -> None:
        self.close()
        self._bar = contextlib.ExitStack()
        self._update = self._bar.enter_context(BARS.bar(f"epoch {epoch + 1}", total=total_batches,
                                                        completed=done_batches))

    def step(self, stats: dict) -> None:
        parts = [f"skipped ({stats['skipped']})"] if stats.get("skipped") else \
            [f"loss {stats.get('loss_total', float('nan')):.3f}", f"lr {stats['lr']:.2e}"]
        if self._meter is not None:
            self._utterances += stats["utterances"]
            self._meter.update(stats["step"], self._total_steps, processed=self._utterances, note=", ".join(parts))
        if self._update is None:
            return
        speed = stats["utterances"] / stats["seconds"] if stats.get("seconds") else 0.0
        self._update(completed=stats["batch"], stats="  ".join([*parts, f"{speed:.1f} utt/s"]))

    def validation(self, metrics: dict) -> None:
        marker = " [green]★ best[/]" if metrics["improved"] else ""
        line = "  ".join(f"{name[0].upper()} {_ccc(metrics[f'ccc_{name}'])}" for name in ATTRIBUTES
                         if f"ccc_{name}" in metrics)  # the attributes the run trains (--attributes)
        BARS.print(f"validation on {metrics['split']} ({metrics['utterances']:,} utterances) after step "
                   f"{metrics['step']}: CCC {line}  avg {_ccc(metrics['ccc_average'])}{marker}")
        if metrics.get("floor_blend"):  # --floor-blend: the network's weight against the floor, per attribute
            weights = "  ".join(f"{name[0].upper()} {weight:.2f}" for name, weight in metrics["floor_blend"].items())
            BARS.print(f"  network weight in the blend with the floor: {weights}")
        if metrics.get("collapsed"):
            BARS.print(f"[yellow]warning:[/] {collapse_text(metrics['collapsed'])}")

    def message(self, text: str) -> None:
        BARS.print(text, markup=False)

    def finish(self, result) -> None:
        import time

        self.close()
        validated = next((f"; CCC on {record['split']} ({record['utterances']:,} utterances)"
                          for record in reversed(result.history) if "split" in record), "")
        table = Table(title=f"sertool train: {result.stopped} after {result.steps} steps "
                            f"({time.perf_counter() - self._started:.0f} s){validated}", title_justify="left")
        names = score_columns([result.best])
        for column in ("checkpoint", "step", *names):
            table.add_column(column, justify="left" if column == "checkpoint" else "right")
        if result.best:
            table.add_row(str(result.run_dir / BEST_NAME), str(result.best_step),
                          *(f"{result.best[name]:.4f}" for name in names))
        out.print(table)
        why = next((record.get("floor_blend_why") for record in reversed(result.history) if record["improved"]), None)
        for name, reason in (why or {}).items():  # --floor-blend: what best.pt's network carries, and why
            out.print(f"{BEST_NAME} {name}: {reason}", markup=False)
        if result.collapsed:
            err.print(f"[yellow]warning:[/] {BEST_NAME}: {collapse_text(result.collapsed)}")
        if result.skipped_steps or result.skipped_audio:
            err.print(f"skipped {result.skipped_steps} step(s) with a non-finite loss or gradient and "
                      f"{len(result.skipped_audio)} unreadable clip(s); see {result.run_dir / SUMMARY_NAME}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar, self._update, self._task_update = None, None, None
        self._task_name = None


def _length(summary: dict) -> str:
    """How long a run is, e.g. "20 epochs of 310 micro-batches" or "5,000 steps (epochs of 310 micro-batches)"."""
    epochs, steps, batches = summary["epochs"], summary.get("max_steps", 0), summary["batches_per_epoch"]
    if not steps:
        return f"{epochs} epochs of {batches} micro-batches"
    limit = f" or {epochs} epochs, whichever ends first" if epochs else ""
    return f"{steps:,} optimiser steps{limit} (epochs of {batches} micro-batches)"


def score_columns(scores: list[dict]) -> list[str]:
    """The score columns of a table of ``scores`` (each a row's CCC by name): every attribute that a row has (a
    system of fewer attributes has its own alone, ``train.attributes``), then "average"."""
    return [name for name in SCORE_NAMES if any(name in row for row in scores)]


def _cell(values: dict, name: str, text: Callable[[Any], str]) -> str:
    """``text`` of ``values[name]``, or a dash where the row has no such score."""
    return text(values[name]) if name in values else "–"


def print_differences(title: str, differences: list) -> None:
    """``CCC(system) − CCC(reference)`` per attribute with its paired bootstrap interval (``Difference`` rows);
    a dash where the two systems share no such score (an attribute one of them does not predict, or the average of
    other attributes)."""
    table = Table(title=title, title_justify="left")
    table.add_column("system − reference", overflow="fold")
    names = score_columns([item.value for item in differences])
    for column in names:
        table.add_column(column, justify="right", no_wrap=True)
    for item in differences:
        table.add_row(f"{item.system} − {item.reference}",
                      *(_cell(item.value, name, lambda value: f"{value:+.4f}") for name in names))
        table.add_row("  95 % CI", *(_cell(item.ci, name, lambda ci: f"[{ci.low:+.3f}, {ci.high:+.3f}]")
                                     for name in names), end_section=True)
    out.print(table)
    out.print("an interval that excludes 0 is a difference these utterances support; paired: the same resamples "
              "for both systems", markup=False, highlight=False)



def print_scores(title: str, rows: list, *, highlight: str | None = None) -> None:
    """CCC per attribute and average (and gender accuracy / UAR where present), one row per system; then a
    table of bootstrap confidence intervals where the rows have them, and what the scores leave out. A system of
    fewer attributes (``train.attributes``) has a dash for the others, and its average is that of its own."""
    out.print(_scores_table(title, rows, highlight))
    if any(row.ci for row in rows):
        out.print(_intervals_table(rows, highlight))
    _print_score_notes(rows)


def _scores_table(title: str, rows: list, highlight: str | None) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("system", overflow="fold")
    names = score_columns([row.ccc for row in rows])
    for column in ("utterances", *names):
        table.add_column(column, justify="right", no_wrap=True)
    with_gender = any(row.gender_accuracy is not None for row in rows)
    if with_gender:
        table.add_column("gender acc", justify="right", no_wrap=True)
        table.add_column("gender UAR", justify="right", no_wrap=True)
    for row in rows:
        cells = [row.name, f"{row.num_utterances:,}", *(_cell(row.ccc, name, lambda value: f"{value:.4f}")
                                                        for name in names)]
        if with_gender:
            cells += ["–" if row.gender_accuracy is None else f"{row.gender_accuracy:.3f}",
                      "–" if row.gender_uar is None else f"{row.gender_uar:.3f}"]
        table.add_row(*cells, style="bold" if row.name == highlight else None)
    return table


def _intervals_table(rows: list, highlight: str | None) -> Table:
    intervals = Table(title="95 % confidence intervals (bootstrap: utterances resampled with replacement)",
                      title_justify="left")
    intervals.add_column("system", overflow="fold")
    names = score_columns([row.ci for row in rows if row.ci])
    for name in names:
        intervals.add_column(name, justify="right", no_wrap=True)
    for row in rows:
        if row.ci:
            cells = (_cell(row.ci, name, lambda ci: f"[{ci.low:.3f}, {ci.high:.3f}]") for name in names)
            intervals.add_row(row.name, *cells, style="bold" if row.name == highlight else None)
    return intervals


def _print_score_notes(rows: list) -> None:
    """What the scores leave out (trained-on utterances), cannot tell (unknown training data) or warn about."""
    excluded = max(row.excluded_trained_on for row in rows) if rows else 0
    if excluded:
        out.print(f"{excluded:,} utterances of the split are left out of these scores: trained on (the checkpoints "
                  "record their training utterances)", markup=False, highlight=False)
    for row in rows:
        if not row.training_data_known:
            out.print(f"{row.name}: what it trained on is unknown (a predictions file, or a checkpoint of an older "
                      "sertool): cannot tell whether these utterances were held out", markup=False, highlight=False)
        if row.training_data_note:
            out.print(row.training_data_note, markup=False, highlight=False)
    print_collapse_warnings(rows)


def print_collapse_warnings(rows: list) -> None:
    """On stderr, one warning per score row whose heads collapsed (also shown with ``--json``)."""
    for row in rows:
        if row.collapsed:
            err.print(f"[yellow]warning:[/] {row.name}: {collapse_text(row.collapsed)}")


def collapse_text(attributes) -> str:
    """The one warning about collapsed heads, shared by evaluate, ensemble, baseline and train."""
    from sertool.models.ccc import COLLAPSE_SPREAD_RATIO

    return (f"{', '.join(attributes)} predictions are near-constant (spread ≤ {COLLAPSE_SPREAD_RATIO:g} × the "
            "labels'): the head collapsed, so its CCC says nothing about what it learned")
