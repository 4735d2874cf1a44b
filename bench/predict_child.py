"""Child process of benchmark 8: run `sertool predict ARGS...` in this process, then print its peak resident
memory (``VmHWM``, see ``memory_child.peak_rss_kb``) as one JSON line.

Usage: ``python bench/predict_child.py RUN AUDIO --out CSV [predict flags]``.
"""
from __future__ import annotations

import json
import sys

from memory_child import peak_rss_kb
from sertool.cli.commands import cli


def main(args: list[str]) -> None:
    cli.main(["predict", *args], prog_name="sertool", standalone_mode=False)
    print(json.dumps({"max_rss_kb": peak_rss_kb()}))


if __name__ == "__main__":
    main(sys.argv[1:])
