"""The run folder: what `sertool train --out RUN_DIR` records besides its checkpoints."""
from __future__ import annotations

import json
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from sertool.checkpoint import provenance
from sertool.config import Config
from sertool.data.report import LoadReport
from sertool.errors import SertoolError
from sertool.io import atomic_write

# Packages whose versions decide whether a result can be reproduced.
_RECORDED_PACKAGES = ("torch", "torchaudio", "transformers", "numpy", "soundfile", "safetensors")


def prepare_run_folder(run_dir: Path, *, force: bool) -> None:
    """Create ``run_dir``; an existing folder with files in it is refused unless ``force``.

    Raises:
        SertoolError: the folder holds files (naming ``--force`` and ``--resume``), or cannot be created.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise SertoolError(f"--out {run_dir}: exists and is not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not force:
        raise SertoolError(f"--out {run_dir}: the folder already holds a run; pass --resume {run_dir} to continue it, "
                           "--force to start over in it, or choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SertoolError(f"--out {run_dir}: cannot create the folder ({error.strerror})") from None
    if force:
        for stale in ("metrics.jsonl", "summary.json"):
            (run_dir / stale).unlink(missing_ok=True)


def write_run_files(run_dir: Path, config: Config, *, argv: Sequence[str], data_summary: dict[str, Any],
                    load_report: LoadReport) -> None:
    """``config.yaml`` (the resolved config: `sertool train --config` takes it back), ``argv.txt``,
    ``environment.json`` (versions, code revision, seed, machine, data summary) and ``data_report.json``
    (every dropped row and warning of the corpus read, naming its file and line)."""
    with atomic_write(run_dir / "config.yaml") as handle:
        yaml.safe_dump(config.to_dict(), handle, sort_keys=False)
    with atomic_write(run_dir / "argv.txt") as handle:
        handle.write(" ".join(argv) + "\n")
    versions = {}
    for package in _RECORDED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    environment = {**provenance(), "python": sys.version.split()[0], "platform": platform.platform(),
                   "packages": versions, "seed": config.seed, "data": data_summary}
    with atomic_write(run_dir / "environment.json") as handle:
        json.dump(environment, handle, indent=2)
    with atomic_write(run_dir / "data_report.json") as handle:
        json.dump({"summary": load_report.summary(),
                   "dropped": [vars(problem) for problem in load_report.dropped],
                   "warnings": [vars(problem) for problem in load_report.warnings]}, handle, indent=2)


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete the temporary files of writes a killed run never finished (``atomic_write`` names them
    ``.<name>.<random>.tmp``); the files they were meant to replace are whole."""
    for stale in run_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def truncate_metrics(run_dir: Path, *, step: int, validations: int) -> None:
    """Keep only the ``metrics.jsonl`` lines that a checkpoint at ``step`` with ``validations`` validations
    in its history accounts for: a killed run may have logged steps (or a validation) after its last
    checkpoint, and the resumed run logs them again."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line of a killed run
        if record.get("type") == "valid":
            if validations > 0:
                kept.append(line)
                validations -= 1
        elif record.get("step", 0) <= step:
            kept.append(line)
    with atomic_write(path) as handle:
        handle.write("".join(line + "\n" for line in kept))
