"""The command line every docs generator shares: rewrite the generated parts of one document, or with
``--check`` only say whether they are current (exit 1 if not)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def regenerate(document: Path, updated: Callable[[str], str], *, description: str, script: str) -> int:
    """Parse ``--check``; write ``updated(document's text)`` to ``document``, or with ``--check`` return 1 if that
    differs from what is there. ``script`` is how to run the generator, for the message."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help=f"exit 1 if {document.name} is not current")
    arguments = parser.parse_args()
    current = document.read_text(encoding="utf-8")
    wanted = updated(current)
    if arguments.check:
        if wanted != current:
            print(f"{document} is not current: run python {script}", file=sys.stderr)
            return 1
        return 0
    document.write_text(wanted, encoding="utf-8")
    print(f"wrote {document}")
    return 0
