"""Warnings of other packages that say nothing a user can act on, silenced where they arise.

Each is named by its exact message (its start) and its kind, and silenced only around the call that raises
it, never process-wide: any other warning of the same package still reaches the user. ``--debug`` (or
``SERTOOL_DEBUG=1``) shows them all.
"""
from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from sertool.guards.surface import debug_requested


@contextmanager
def without_warning(message: str, category: type[Warning]) -> Iterator[None]:
    """For the duration, Python warnings of ``category`` whose text starts with ``message`` are not shown."""
    if debug_requested():
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
        yield


class _Without(logging.Filter):
    """Drops the log records whose message starts with ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.message)


@contextmanager
def without_log_message(logger_name: str, message: str) -> Iterator[None]:
    """For the duration, the records of logger ``logger_name`` whose message starts with ``message`` are not
    shown (transformers warns through its loggers, not Python warnings)."""
    if debug_requested():
        yield
        return
    logger, dropped = logging.getLogger(logger_name), _Without(message)
    logger.addFilter(dropped)
    try:
        yield
    finally:
        logger.removeFilter(dropped)


@contextmanager
def warnings_held() -> Iterator[list[str]]:
    """While a command runs, hold back every Python warning instead of printing it with its file and source line.

    sertool reports through its own lines, never through ``warnings``, so a Python warning is always another
    package's (torch, transformers, numpy): the known, useless ones are silenced where they arise
    (``without_warning``); this catches the rest, so that none reaches the user unannounced. The list it yields
    gains each held warning's text (``Category: message``), for the caller to say how many were held (and for
    tests). ``--debug`` shows them all, as Python would. Loader workers, forked while it is active, hold theirs
    too.
    """
    held: list[str] = []
    if debug_requested():
        yield held
        return
    with warnings.catch_warnings():  # restores the filters and warnings.showwarning when the command ends

        def hold(message: Warning | str, category: type[Warning], filename: str, lineno: int, file=None,
                 line=None) -> None:
            held.append(f"{category.__name__}: {str(message).splitlines()[0] if str(message) else ''}")

        warnings.showwarning = hold
        yield held
