"""Stopping on SIGINT (Ctrl-C) and SIGTERM (what a cluster sends before it kills a job) without losing work.

Python's default turns SIGINT into a ``KeyboardInterrupt`` wherever the main thread happens to be, and
that can be inside a finaliser that swallows it: a DataLoader shutting its workers down at the end of an
epoch prints the traceback and training goes on. SIGTERM, by default, ends the process without running
any ``finally``. So:

- every command turns SIGTERM into ``Interrupted``, as Ctrl-C is a ``KeyboardInterrupt``
  (``raise_on_termination``): temporary files are removed and the exit status is 143;
- DataLoader workers ignore both (``quiet_worker``): a terminal or a cluster signals the whole process
  group, and the workers are the main process's to stop;
- training turns both into a request that the loop honours at its next safe point, an optimiser-step
  boundary, with a checkpoint (``StopRequests``).
"""
from __future__ import annotations

import contextlib
import gc
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by a signal.

    The CLI prints the message and exits with the shell's convention, 128 + the signal number: 130 for
    Ctrl-C, 143 for SIGTERM.
    """

    def __init__(self, signal_number: int, message: str | None = None) -> None:
        self.signal_number = signal_number
        self.exit_status = 128 + signal_number
        super().__init__(message or f"interrupted ({signal_name(signal_number)})")


def signal_name(signal_number: int) -> str:
    """``SIGINT``, ``SIGTERM``, ..."""
    return signal.Signals(signal_number).name


def raise_on_termination() -> None:
    """Make SIGTERM raise ``Interrupted`` in the main thread, as Ctrl-C raises ``KeyboardInterrupt``."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupted)


def quiet_worker(worker_id: int) -> None:
    """``worker_init_fn`` of every DataLoader: the worker ignores SIGINT and SIGTERM, and its garbage collector
    leaves alone what it inherited.

    The main process gets the signals too; it stops the workers itself when it stops. A worker that acted on
    them would print a traceback of its own, or die and turn a clean stop into "DataLoader worker exited
    unexpectedly".

    A worker is a fork of the main process and shares its memory until either writes to a page. A full
    collection in the worker would write to every object the main process had (the collector's bookkeeping
    lies in each object's header), copying all their pages: the Python heap of torch and transformers, the
    run's records. Frozen, those objects are never examined by the worker's collector (what the worker
    allocates itself still is).
    """
    gc.freeze()
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


class StopRequests:
    """SIGINT and SIGTERM, while inside ``with StopRequests() as stops:``, become a request to stop.

    The handler only records the signal (``stops.requested``); the training loop looks at it after each
    optimiser step and stops there, writing ``last.pt`` first. Inside ``with stops.at_once():`` (reading the
    data, building the model, validation: phases that can last minutes and that a checkpoint of the step
    before them already covers) the signal also raises ``Interrupted`` at once. A second signal raises at
    once too, unless ``repeats_stop_at_once`` is False: under torchrun, a worker gets a scheduler's signal
    and then torchrun's copy of it, and a second one means nothing more (torchrun kills the workers after
    its own grace period). Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self, *, repeats_stop_at_once: bool = True) -> None:
        self.signal_number: int | None = None
        self.repeats_stop_at_once = repeats_stop_at_once
        self._at_once = False
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    @property
    def requested(self) -> bool:
        """A stop signal has arrived."""
        return self.signal_number is not None

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    @contextlib.contextmanager
    def at_once(self) -> Iterator[None]:
        """Within this block a stop signal raises ``Interrupted`` immediately."""
        outer, self._at_once = self._at_once, True
        try:
            if self.signal_number is not None:
                raise Interrupted(self.signal_number)
            yield
        finally:
            self._at_once = outer

    def _handle(self, signal_number: int, frame) -> None:
        again = self.signal_number is not None
        self.signal_number = signal_number
        if self._at_once or (again and self.repeats_stop_at_once):
            raise Interrupted(signal_number)


def _raise_interrupted(signal_number: int, frame) -> None:
    raise Interrupted(signal_number)
