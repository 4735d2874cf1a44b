"""Progress of long steps: the library reports, the program decides what is shown.

Library code wraps each long step (a prediction pass, ASR, text encoding, a corpus scan) in
``task(description)`` and reports ``(done, total)`` through the callback it yields. By default nothing is
shown (library use, tests). The command line installs a display (``sertool.cli.console``): rich bars on a
terminal's stderr; where stderr is a pipe or a log file, a plain ``Meter`` line every ``$SERTOOL_LOG_EVERY_S``
seconds (30 by default), without control codes; nothing with ``--quiet``. So every command shows every long
step the same way without a callback threaded through each layer. Import-light: no torch, no rich.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import ContextManager, Protocol

from sertool.core.errors import SertoolError

Update = Callable[[int, int], None]  # (done, total)

# Seconds between two plain progress lines where stderr is no terminal (a log file on a cluster).
LOG_EVERY_VARIABLE = "SERTOOL_LOG_EVERY_S"
DEFAULT_LOG_EVERY_S = 30.0


class Display(Protocol):
    """What shows the tasks: a context manager per task yielding its ``(done, total)`` callback."""

    @property
    def drawing(self) -> bool:
        """Whether bars are drawn on a terminal (then model downloads show their bars too)."""

    def __call__(self, description: str) -> ContextManager[Update]: ...


_display: Display | None = None


def set_display(display: Display | None) -> Display | None:
    """Install ``display`` for every later ``task`` (None: show nothing); returns the one it replaces."""
    global _display
    previous, _display = _display, display
    return previous


def drawing() -> bool:
    """Whether progress bars are being drawn (a display is installed and draws on a terminal)."""
    return _display is not None and _display.drawing


@contextlib.contextmanager
def task(description: str) -> Iterator[Update]:
    """A long step named ``description`` (e.g. "validating on Development (1,234 utterances)"): report with
    the yielded ``update(done, total)``; the step's bar goes away when the block ends."""
    if _display is None:
        yield _ignore
        return
    with _display(description) as update:
        yield update


def _ignore(done: int, total: int) -> None:
    """The update of a task nobody shows."""


def log_every_s() -> float:
    """Seconds between two plain progress lines: ``$SERTOOL_LOG_EVERY_S``, or 30; 0 prints every update.

    Raises:
        SertoolError: the variable is set to something other than a number of seconds ≥ 0.
    """
    text = os.environ.get(LOG_EVERY_VARIABLE, "").strip()
    if not text:
        return DEFAULT_LOG_EVERY_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise SertoolError(f"{LOG_EVERY_VARIABLE}={text!r}: not a number of seconds; set it to the seconds between "
                           f"two progress lines in a log (default {DEFAULT_LOG_EVERY_S:g}; 0: every update)")
    return seconds


def now() -> float:
    """The clock that paces plain progress lines (monotonic seconds); tests replace it."""
    return time.monotonic()


def _write_stderr(line: str) -> None:
    # sys.stderr looked up at each line: a test's captured stream, or the one the process has now.
    print(line, file=sys.stderr, flush=True)


class Meter:
    """The plain progress lines of one long step, for a log file: at most one every ``every_s`` seconds,

    ``LABEL DONE/TOTAL[, NOTE], RATE[ UNIT]/s, elapsed H:MM:SS, left H:MM:SS``

    e.g. ``train: step 120/5,000, loss 0.512, lr 1.00e-04, 38.1 utt/s, elapsed 0:05:02, left 3:24:51``. One
    line each, printable characters only: no carriage return, no escape sequence, whatever the label holds.

    Args:
        label: what the count is of (``"train: step"``; a task's is its description and a colon).
        rate_unit: what the rate counts (``"utt"``); empty: the count's own items.
        every_s: seconds between lines (None: ``log_every_s()``).
        write: where a line goes (default: stderr, flushed at once).
        start: the count when the step starts (a resumed run's step): rate and time left count from it.
    """

    def __init__(self, label: str, *, rate_unit: str = "", every_s: float | None = None,
                 write: Callable[[str], None] | None = None, start: int = 0) -> None:
        self.label = label
        self.rate_unit = rate_unit
        self.every_s = log_every_s() if every_s is None else every_s
        self._write = write or _write_stderr
        self._start = start
        self._started_s = self._printed_s = now()

    def update(self, done: int, total: int, *, processed: int | None = None, note: str = "") -> None:
        """Report ``done`` of ``total``; a line is printed when ``every_s`` have passed since the last one (or
        the start). ``processed``: what the rate counts, since the start (default: ``done`` since the start);
        ``note``: shown after the count (a loss)."""
        at = now()
        if at - self._printed_s < self.every_s:
            return
        self._printed_s = at
        self._write(self.line(done, total, elapsed_s=at - self._started_s, processed=processed, note=note))

    def line(self, done: int, total: int, *, elapsed_s: float, processed: int | None = None, note: str = "") -> str:
        """The line for ``done`` of ``total`` after ``elapsed_s`` seconds (see the class)."""
        advanced = done - self._start
        rate = (advanced if processed is None else processed) / elapsed_s if elapsed_s > 0 else 0.0
        left = _clock_text((total - done) * elapsed_s / advanced) if advanced > 0 and total >= done else "?"
        unit = f" {self.rate_unit}" if self.rate_unit else ""
        text = (f"{self.label} {done:,}/{total:,}{', ' + note if note else ''}, {rate:.1f}{unit}/s, "
                f"elapsed {_clock_text(elapsed_s)}, left {left}")
        return "".join(character if character.isprintable() else "?" for character in text)


def _clock_text(seconds: float) -> str:
    """``H:MM:SS`` (hours unbounded), the way a log reader counts time."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class PlainLines:
    """A ``Display`` for a pipe or a log file: each task prints a ``Meter`` line every ``every_s`` seconds
    (None: ``log_every_s()`` when the task starts), its label the task's description."""

    drawing = False

    def __init__(self, *, every_s: float | None = None, write: Callable[[str], None] | None = None) -> None:
        self.every_s = every_s
        self.write = write

    @contextlib.contextmanager
    def __call__(self, description: str) -> Iterator[Update]:
        meter = Meter(f"{description}:", every_s=self.every_s, write=self.write)
        yield lambda done, total: meter.update(done, total)
