"""Progress of long steps: the library reports, the program decides what is drawn.

Library code wraps each long step (a prediction pass, ASR, text encoding, a corpus scan) in
``task(description)`` and reports ``(done, total)`` through the callback it yields. By default nothing is
drawn (library use, tests). The command line installs a display (``sertool.cli.console``: rich bars on stderr,
none when stderr is not a terminal or with ``--quiet``), so every command shows every long step the same way
without a callback threaded through each layer. Import-light: no torch, no rich.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import ContextManager, Protocol

Update = Callable[[int, int], None]  # (done, total)


class Display(Protocol):
    """What draws the tasks: a context manager per task yielding its ``(done, total)`` callback."""

    @property
    def drawing(self) -> bool:
        """Whether anything is shown (then model downloads show their progress too)."""

    def __call__(self, description: str) -> ContextManager[Update]: ...


_display: Display | None = None


def set_display(display: Display | None) -> Display | None:
    """Install ``display`` for every later ``task`` (None: draw nothing); returns the one it replaces."""
    global _display
    previous, _display = _display, display
    return previous


def drawing() -> bool:
    """Whether progress is being shown (a display is installed and draws)."""
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
    """The update of a task nobody draws."""
