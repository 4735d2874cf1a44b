"""The run folder: its lock, and what `sertool train --out RUN_DIR` records besides its checkpoints."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from sertool.core.config import Config, differences
from sertool.core.constants import ARGV_NAME, BEST_NAME, CONFIG_NAME, LAST_NAME, METRICS_NAME, SUMMARY_NAME
from sertool.core.errors import SertoolError
from sertool.core.interrupts import signal_name
from sertool.data.records import Utterance
from sertool.data.report import LoadReport
from sertool.guards.outputs import atomic_write, remove_files
from sertool.guards.reads import MAX_CONFIG_BYTES, MAX_TABLE_BYTES, read_user_text
from sertool.store.checkpoints import provenance
from sertool.training.curves import CURVES_NAME
from sertool.training.mlflow_tracking import MLFLOW_RUN_NAME, MLFLOW_STORE_NAME

# Packages whose versions decide whether a result can be reproduced.
_RECORDED_PACKAGES = ("torch", "transformers", "numpy", "soundfile", "safetensors")
LOCK_NAME = ".lock"
# The files of a run folder that other commands read are named in core.constants (CONFIG_NAME, ARGV_NAME,
# METRICS_NAME, SUMMARY_NAME, BEST_NAME, LAST_NAME); these two only the run itself writes.
ENVIRONMENT_NAME = "environment.json"  # versions, code revision, seed, machine, data summary
DATA_REPORT_NAME = "data_report.json"  # every row the corpus reader dropped or warned about, and why
# What a run writes into its folder. `--force` removes these before a new run starts in the folder, so that
# it never holds files of two runs (an old best.pt beside a new config.yaml); any other file is the user's.
RUN_FILES = (CONFIG_NAME, ARGV_NAME, ENVIRONMENT_NAME, DATA_REPORT_NAME, METRICS_NAME, SUMMARY_NAME,
             LAST_NAME, BEST_NAME, "best_*.pt", CURVES_NAME, "tensorboard/events.out.tfevents.*",
             MLFLOW_RUN_NAME, MLFLOW_STORE_NAME, f"{MLFLOW_STORE_NAME}-journal")
_SHOWN_DIFFERENCES = 4  # keys named in the warning about an edited config.yaml


@contextlib.contextmanager
def locked_run_folder(run_dir: Path, *, create: bool, warn: Callable[[str], None]) -> Iterator[Callable[[], None]]:
    """Hold ``run_dir`` for the life of the run: a second `sertool train` on the same folder is refused.

    Yields ``record_holder()``, which writes this process's pid and host into the lock file, for the message
    a second command gets; called once the run is known to go ahead, so a refused command changes nothing.

    The lock is ``flock(2)`` on ``run_dir/.lock``. The kernel releases it when the process ends, however it
    ends, so a run killed with ``kill -9`` never blocks its own ``--resume``. The file itself stays:
    removing it would let a third process lock a fresh file while a second still holds the old one. Under
    DDP only rank 0 calls this. On a file system without locks, the run goes on unlocked after ``warn``.

    Args:
        run_dir: the run folder.
        create: create it (a new run); otherwise it must exist (``--resume``).
        warn: says that the folder could not be locked.

    Raises:
        SertoolError: another process holds the folder, or it cannot be created or is not a folder.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise SertoolError(f"{run_dir}: exists and is not a folder")
    if not create and not run_dir.is_dir():
        raise SertoolError(f"--resume {run_dir}: no such run folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK_NAME, "a+", encoding="utf-8", errors="replace")
    except OSError as error:
        raise SertoolError(f"{run_dir}: cannot create the run folder or write in it "
                           f"({error.strerror or error})") from None
    try:
        locked = True
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "a process"
            raise SertoolError(f"{run_dir}: in use by another `sertool train` ({owner}); wait for it to end or stop "
                               "it, or choose another --out") from None
        except OSError as error:
            locked = False
            warn(f"{run_dir}: cannot lock the run folder ({error.strerror or error}); nothing stops a second "
                 "`sertool train` from writing into it")

        def record_holder() -> None:
            if locked:
                handle.seek(0)
                handle.truncate()
                handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
                handle.flush()

        yield record_holder
    finally:
        handle.close()


def prepare_run_folder(run_dir: Path, *, force: bool, init_from: str | None = None) -> bool:
    """Check the (locked) folder of a new run: it must hold no other run, unless ``force``.

    Nothing is removed here. A run started with ``force`` in a folder holding a previous run replaces it
    only once its own set-up has checked every input (``replace_previous_run``): a typo in a flag, a
    missing split or a model that does not load leaves the previous run whole.

    Args:
        run_dir: the run folder (it exists: ``locked_run_folder`` made it).
        force: ``--force``.
        init_from: ``--init-from``; it may not be a file that replacing the previous run would remove.

    Returns:
        Whether the folder holds files of a previous run, which this run is to replace.

    Raises:
        SertoolError: the folder holds files and ``force`` is not set (naming ``--force`` and ``--resume``), or
            ``init_from`` is among the files ``force`` would remove.
    """
    if not any(path.name != LOCK_NAME for path in run_dir.iterdir()):
        return False
    if not force:
        raise SertoolError(f"--out {run_dir}: the folder already holds a run; pass --resume {run_dir} to continue it, "
                           "--force to start over in it, or choose another --out")
    if init_from is not None:
        start = Path(init_from).expanduser()
        start = start / BEST_NAME if start.is_dir() and (start / BEST_NAME).is_file() else start
        if os.path.realpath(start) in {os.path.realpath(path) for path in run_outputs(run_dir)}:
            raise SertoolError(f"--init-from {init_from}: {start} belongs to the run in --out {run_dir}, which --force "
                               "replaces, so the weights this run starts from would be deleted; export them first "
                               f"(sertool export {init_from} --out DIR) and pass --init-from DIR, or choose another "
                               "--out")
    return True


def replace_previous_run(run_dir: Path, config: Config, argv: Sequence[str]) -> None:
    """Remove the previous run's files (``remove_run_outputs``) and start the new run's record: ``config.yaml``
    and ``argv.txt``. Called once the new run's set-up has succeeded."""
    remove_run_outputs(run_dir)
    write_config_file(run_dir, config)
    add_command_line(run_dir, argv)


def interrupted_message(run_dir: Path, signal_number: int, *, saved_step: int | None,
                        previous_run_kept: bool = False) -> str:
    """One line for a run stopped by ``signal_number``: what ``run_dir`` kept, and the command that continues it.

    Args:
        saved_step: the step ``last.pt`` holds, when this run wrote it; None when it has not (yet).
        previous_run_kept: the run was set up to replace a previous run (``--force``), which is still whole.
    """
    stopped = f"interrupted ({signal_name(signal_number)})"
    if previous_run_kept:
        return (f"{stopped} while the new run was set up; {run_dir} still holds its previous run, unchanged. Run the "
                "same command again to replace it")
    resume = f"Continue with: sertool train --resume {run_dir}"
    if saved_step is not None:
        return f"{stopped}; {run_dir / LAST_NAME} holds step {saved_step}. {resume}"
    if (run_dir / LAST_NAME).is_file():
        return f"{stopped}; {run_dir / LAST_NAME} holds the last checkpoint. {resume}"
    if (run_dir / CONFIG_NAME).is_file():
        return f"{stopped} before the first checkpoint; the run starts again from step 0. {resume}"
    return f"{stopped} before {run_dir} was set up; nothing to resume: run the same command again"


def run_outputs(run_dir: Path, *, keep: Sequence[str] = ()) -> list[Path]:
    """The files a run wrote into ``run_dir`` (``RUN_FILES``), but those named in ``keep``."""
    return [path for pattern in RUN_FILES for path in run_dir.glob(pattern) if path.name not in keep]


def remove_run_outputs(run_dir: Path, *, keep: Sequence[str] = ()) -> None:
    """Remove the files a run wrote into ``run_dir`` (``run_outputs``, and unfinished writes)."""
    remove_files(run_outputs(run_dir, keep=keep))
    remove_stale_temporaries(run_dir)


def write_config_file(run_dir: Path, config: Config) -> None:
    """``config.yaml``: the resolved config (`sertool train --config` takes it back)."""
    with atomic_write(run_dir / CONFIG_NAME, replace=True) as handle:
        yaml.safe_dump(config.to_dict(), handle, sort_keys=False)


def add_command_line(run_dir: Path, argv: Sequence[str]) -> None:
    """Add ``argv`` to ``argv.txt``: the command that started the run, then one line per ``--resume``."""
    path = run_dir / ARGV_NAME
    previous = read_user_text(path, what="command log", max_bytes=MAX_CONFIG_BYTES, errors="replace") \
        if path.is_file() else ""
    with atomic_write(path, replace=True) as handle:
        handle.write(previous + " ".join(argv) + "\n")


def write_environment(run_dir: Path, config: Config, *, data_summary: dict[str, Any], load_report: LoadReport) -> None:
    """``environment.json`` (versions, code revision, seed, machine, data summary) and ``data_report.json``
    (every dropped row and warning of the corpus read, naming its file and line)."""
    versions: dict[str, str | None] = {}
    for package in _RECORDED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    environment = {**provenance(), "python": sys.version.split()[0], "platform": platform.platform(),
                   "packages": versions, "seed": config.seed, "data": data_summary}
    with atomic_write(run_dir / ENVIRONMENT_NAME, replace=True) as handle:
        json.dump(environment, handle, indent=2)
    with atomic_write(run_dir / DATA_REPORT_NAME, replace=True) as handle:
        json.dump({"summary": load_report.summary(),
                   "dropped": [vars(problem) for problem in load_report.dropped],
                   "warnings": [vars(problem) for problem in load_report.warnings]}, handle, indent=2)


def reconcile_config_file(run_dir: Path, *, recorded: Config, config: Config) -> str | None:
    """Make ``config.yaml`` say what ``--resume`` continues with.

    ``last.pt`` is authoritative: it holds the config the run was trained with (``recorded``), which
    ``--resume`` uses, with only the locations given on its command line changed (``config``). A
    ``config.yaml`` that says something else (edited, damaged or deleted) is rewritten to ``config``.

    Returns:
        A one-line warning naming the keys the file had changed, or None when it agreed with last.pt.
    """
    path = run_dir / CONFIG_NAME
    warning = None
    if not path.is_file():
        warning = f"{path} was missing; restored from {LAST_NAME}"
    else:
        try:
            on_disk = Config.from_yaml(path)
        except SertoolError as error:
            warning = f"{path} is unreadable ({error}); rewritten from {LAST_NAME}"
        else:
            changed = differences(on_disk, recorded)
            if changed:
                shown = ", ".join(f"{key} {on_disk.get(key)!r} (last.pt: {recorded.get(key)!r})"
                                  for key in changed[:_SHOWN_DIFFERENCES])
                more = f" and {len(changed) - _SHOWN_DIFFERENCES} more" if len(changed) > _SHOWN_DIFFERENCES else ""
                warning = (f"{path} differs from the config in {LAST_NAME}: {shown}{more}. --resume continues with "
                           f"{LAST_NAME}'s config and has rewritten {CONFIG_NAME} to it; to change settings, start a "
                           "new run with --config")
    if warning is not None or differences(recorded, config):
        write_config_file(run_dir, config)
    return warning


def data_fingerprint(train: Sequence[Utterance], valid: Sequence[Utterance]) -> str:
    """A hash of what a run trains and validates on: every utterance's id, duration (ms), labels, class,
    speaker and gender, per split. ``--resume`` compares it, so a corpus that moved (``--corpus`` again) or
    changed under the same path is caught before a run continues on other data."""
    # The hash of every utterance's JSON line ``[role, id, ...]``, one after another. Encoded as one JSON list
    # of those lines (one call, not 115,000 on MSP-Podcast), whose text is theirs joined by ", " in "[...]":
    # ``], ["`` is a boundary between two lines and nothing else, since a line holds no "[" outside its
    # strings and a string holds no unescaped '"'.
    rows = [[role, utt.id, round(utt.duration_s, 3), utt.arousal, utt.valence, utt.dominance, utt.emo_class,
             utt.speaker, utt.gender]
            for role, utterances in (("train", train), ("valid", valid))
            for utt in sorted(utterances, key=lambda item: item.id)]
    return hashlib.sha256(json.dumps(rows)[1:-1].replace('], ["', ']["').encode()).hexdigest()


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete the temporary files of writes a killed run never finished (``atomic_write`` names them
    ``.<name>.<random>.tmp``); the files they were meant to replace are whole."""
    remove_files(run_dir.glob(".*.tmp"))


def truncate_metrics(run_dir: Path, *, step: int, validations: int) -> None:
    """Keep only the ``metrics.jsonl`` lines that a checkpoint at ``step`` with ``validations`` validations
    in its history accounts for: a killed run may have logged steps (or a validation) after its last
    checkpoint, and the resumed run logs them again."""
    path = run_dir / METRICS_NAME
    if not path.is_file():
        return
    kept = []
    for line in read_user_text(path, what="training log", max_bytes=MAX_TABLE_BYTES, errors="replace").splitlines():
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
    with atomic_write(path, replace=True) as handle:
        handle.write("".join(line + "\n" for line in kept))
