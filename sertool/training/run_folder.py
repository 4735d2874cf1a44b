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

from sertool.checkpoint import BEST_NAME, LAST_NAME, provenance
from sertool.config import Config
from sertool.data.report import LoadReport
from sertool.errors import SertoolError
from sertool.io import atomic_write

# Packages whose versions decide whether a result can be reproduced.
_RECORDED_PACKAGES = ("torch", "torchaudio", "transformers", "numpy", "soundfile", "safetensors")


# What a run writes into its folder (a run started again from step 0 removes them); any other file is the
# user's.
RUN_FILES = ("config.yaml", "argv.txt", "environment.json", "data_report.json", "metrics.jsonl", "summary.json",
             LAST_NAME, BEST_NAME, "best_*.pt")


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


def remove_run_outputs(run_dir: Path, *, keep: Sequence[str] = ()) -> None:
    """Remove the files a run wrote into ``run_dir`` (``RUN_FILES`` but ``keep``, and unfinished writes)."""
    for pattern in RUN_FILES:
        for stale in run_dir.glob(pattern):
            if stale.name not in keep:
                stale.unlink(missing_ok=True)
    remove_stale_temporaries(run_dir)


def write_config_file(run_dir: Path, config: Config) -> None:
    """``config.yaml``: the resolved config (`sertool train --config` takes it back)."""
    with atomic_write(run_dir / "config.yaml") as handle:
        yaml.safe_dump(config.to_dict(), handle, sort_keys=False)


def add_command_line(run_dir: Path, argv: Sequence[str]) -> None:
    """Add ``argv`` to ``argv.txt``: the command that started the run, then one line per ``--resume``."""
    path = run_dir / "argv.txt"
    previous = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    with atomic_write(path) as handle:
        handle.write(previous + " ".join(argv) + "\n")


def write_environment(run_dir: Path, config: Config, *, data_summary: dict[str, Any], load_report: LoadReport) -> None:
    """``environment.json`` (versions, code revision, seed, machine, data summary) and ``data_report.json``
    (every dropped row and warning of the corpus read, naming its file and line)."""
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
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line of a killed run (or a damaged one)
        if not isinstance(record, dict):
            continue
        if record.get("type") == "valid":
            if validations > 0:
                kept.append(line)
                validations -= 1
        elif record.get("step", 0) <= step:
            kept.append(line)
    with atomic_write(path) as handle:
        handle.write("".join(line + "\n" for line in kept))
