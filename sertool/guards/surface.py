"""The error surface: how a failure reaches the user, the same for every command and ``sertool.load``.

``known_failure`` turns each failure a user can act on into one line naming the file or flag and what to
do: sertool's own ``SertoolError``; a full disk, a name too long, no permission or a read-only file system
(``OSError``s, naming their file); no memory (the allocator's errors, CPU or GPU); no CUDA device; a
data-loader worker that died (the out-of-memory killer's usual victim). Anything else is a bug in sertool:
``report_bug`` saves its traceback to a file and gives one line saying so and how to report it, unless
``--debug`` or ``SERTOOL_DEBUG=1`` asks for the traceback itself.

Nothing here swallows an error: each is re-raised or ends the process with a non-zero status, so a wrong
result can never pass as a success.
"""
from __future__ import annotations

import errno
import os
import tempfile
import traceback

from sertool.core.errors import SertoolError
from sertool.core.version import __version__

DEBUG_VARIABLE = "SERTOOL_DEBUG"

# What to do about each kind of OSError, by errno.
_OS_ADVICE = {
    errno.ENOSPC: "the disk is full; free space (or write elsewhere) and run the command again",
    errno.EDQUOT: "the disk quota is used up; free space (or write elsewhere) and run the command again",
    errno.ENAMETOOLONG: "a name too long for this file system; choose a shorter path",
    errno.EACCES: "permission denied; choose a path you may use, or change its permissions",
    errno.EPERM: "operation not permitted; choose a path you may use, or change its permissions",
    errno.EROFS: "a read-only file system; write somewhere else",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) or use fewer --num-workers",
    errno.ENFILE: "too many open files on this machine; use fewer --num-workers",
    errno.EIO: "an input/output error from the disk or the network file system; check it and run again",
    errno.ENOMEM: "out of memory",
}
# Words of the allocators' messages for a failed allocation (torch's CPU and CUDA allocators, numpy).
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "cannot allocate memory", "defaultcpuallocator",
                  "unable to allocate")
_MEMORY_ADVICE = ("out of memory; use smaller batches (--batch-s for evaluate / predict / ensemble, --max-batch-s "
                  "and --max-duration-s for train), fewer --num-workers, or a machine with more memory")
# torch's words when CUDA was asked for on a machine without it.
_NO_CUDA = ("torch not compiled with cuda", "no cuda gpus are available", "found no nvidia driver",
            "cuda driver version is insufficient", "cuda is not available")
# torch's words when a DataLoader worker process died ("DataLoader worker (pid 12) is killed by signal: ...").
_DEAD_WORKER = ("exited unexpectedly", "killed by signal")


def debug_requested() -> bool:
    """Whether ``SERTOOL_DEBUG`` asks for tracebacks instead of one-line messages."""
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def known_failure(error: BaseException) -> str | None:
    """The one-line message for a failure the user can act on, or None when ``error`` is a bug."""
    if isinstance(error, SertoolError):
        return str(error)
    if isinstance(error, MemoryError):
        return _MEMORY_ADVICE
    if isinstance(error, OSError) and error.errno in _OS_ADVICE:
        return _os_message(error)
    text = str(error).lower()
    if isinstance(error, (RuntimeError, AssertionError)) and any(words in text for words in _NO_CUDA):
        return ("--device cuda: this machine has no usable CUDA device (or this torch is built without CUDA); use "
                "--device cpu, or --device auto to take a GPU only where there is one")
    if isinstance(error, RuntimeError) and any(words in text for words in _OUT_OF_MEMORY):
        return _MEMORY_ADVICE
    if isinstance(error, RuntimeError) and "dataloader worker" in text and any(words in text for words in _DEAD_WORKER):
        return ("a data-loader worker process died (killed, often by the out-of-memory killer); run again with fewer "
                "--num-workers (0 reads in the main process); `sertool train --resume RUN_DIR` continues a run "
                "from its last checkpoint")
    return None


def as_sertool_error(error: BaseException) -> SertoolError | None:
    """A known failure as a ``SertoolError`` (``sertool.load`` and ``Model.predict`` raise these), None for a bug."""
    if isinstance(error, SertoolError):
        return error
    message = known_failure(error)
    return None if message is None else SertoolError(message)


def report_bug(error: BaseException, *, command: str) -> str:
    """Save ``error``'s traceback to a file and return the one line that names it.

    Args:
        error: the unexpected exception (being handled).
        command: the command line, recorded in the report.
    """
    report = (f"sertool {__version__}\ncommand: {command}\n\n"
              + "".join(traceback.format_exception(type(error), error, error.__traceback__)))
    summary = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
    try:
        descriptor, path = tempfile.mkstemp(prefix="sertool-bug-", suffix=".txt")
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(report)
    except OSError:
        return (f"internal error, a bug in sertool ({summary}); its traceback could not be saved: run again with "
                f"{DEBUG_VARIABLE}=1 to see it, and report it to sertool's issue tracker")
    return (f"internal error, a bug in sertool ({summary}); traceback saved to {path}. Please report it to "
            "sertool's issue tracker with that file (or run again with --debug to see the traceback here)")


def _os_message(error: OSError) -> str:
    advice = _OS_ADVICE[error.errno]  # type: ignore[index]
    name = error.filename if error.filename is not None else None
    return f"{os.fsdecode(name)}: {advice}" if name is not None else advice
