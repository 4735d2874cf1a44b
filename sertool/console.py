"""Rich output shared by every command: tables to stdout, progress and messages to stderr."""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from sertool.data.info import SplitSummary, class_order
from sertool.data.records import EMO_CLASSES
from sertool.data.report import LoadReport

# Tables go to stdout; when that is a file or pipe, rich would wrap them at 80 columns: use 120 there.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, highlight=False)

# How many individual problems to list before only counting them.
_MAX_LISTED_PROBLEMS = 10


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A ``(done, total)`` callback drawing a transient progress bar on stderr."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def print_load_report(report: LoadReport) -> None:
    """The dropped rows and warnings of a corpus read: counts by reason and the first few items."""
    if not report.dropped and not report.warnings:
        return
    err.print(f"[bold]data:[/] {report.summary()}")
    for problem in (report.dropped + report.warnings)[:_MAX_LISTED_PROBLEMS]:
        err.print(f"  {problem}", markup=False)
    hidden = len(report.dropped) + len(report.warnings) - _MAX_LISTED_PROBLEMS
    if hidden > 0:
        err.print(f"  … and {hidden} more")


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
            f"{summary.classes[code]:,} ({summary.classes[code] / summary.utterances:.1%})" if summary.utterances else "0"
            for summary in summaries
        ]
        classes.add_row(f"{code} {name}", *cells)
    out.print(classes)
