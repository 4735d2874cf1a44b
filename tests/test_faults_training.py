"""Fault injection on the training side: signals and kill -9 at every phase, concurrent runs, damaged run
folders, full disks, hostile paths, and NaN / infinite / absurd numbers in configs, flags and data.

Each case ends as one line naming the file, row or flag, or as correct behaviour: never a traceback, never
exit 0 with garbage, never a lost or mixed file. Each test carries its cases as `@case` markers, from which
docs/reliability.md's tables are generated (scripts/reliability_table.py).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from click.testing import CliRunner

from sertool.cli.commands import cli
from sertool.core.config import Config
from sertool.store.checkpoints import load_checkpoint
from sertool.training import loop
from sertool.training.loop import train
from tests.cases import case
from tests.corpus_files import write_learnable_corpus

# 8 training utterances in batches of 2: 4 optimiser steps per epoch, 2 epochs, last.pt after every step.
TINY = ["--epochs", "2", "--sampling", "whole", "--batch-size", "2", "--accum-steps", "1", "--backbone", "fbank",
        "--fbank-dim", "8", "--head-hidden-dim", "8", "--head-dropout", "0.3", "--checkpoint-every-steps", "1",
        "--device", "cpu"]
STEPS = 8


def run(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


def usage_error(result, flag: str) -> str:
    """click's own message for a bad flag value: status 2, the flag named, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: Invalid value for") and flag in line, result.output
    return line


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Runs here and in the subprocesses (OMP_NUM_THREADS=1) must sum in the same order to be equal bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_learnable_corpus(tmp_path_factory.mktemp("faults") / "c", per_split={"Train": 8, "Development": 4})


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory) -> Path:
    """The uninterrupted run every resumed one must equal, in a process like theirs: numpy's BLAS threads
    (OMP_NUM_THREADS) change the floor's ridge fit in its last bits, and this process cannot set them."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    done = subprocess.run([sys.executable, "-m", "sertool", "train", "--corpus", str(corpus), "--out", str(run_dir),
                           "--num-workers", "0", *TINY], capture_output=True, text=True, timeout=300,
                          env=_environment())
    assert done.returncode == 0, done.stderr
    return run_dir


@pytest.fixture
def finished(straight, tmp_path) -> Path:
    """A copy of the finished run folder, to damage."""
    copy = tmp_path / "finished"
    shutil.copytree(straight, copy)
    return copy


def assert_same_run(run_dir: Path, reference: Path) -> None:
    a, b = load_checkpoint(run_dir, name="last.pt"), load_checkpoint(reference, name="last.pt")
    assert a["step"] == b["step"] == STEPS
    assert a["training"]["progress"]["history"] == b["training"]["progress"]["history"]
    for key in b["model_state"]:
        torch.testing.assert_close(a["model_state"][key], b["model_state"][key], rtol=0, atol=0, msg=key)
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    drop_time = [{k: v for k, v in record.items() if k != "seconds"} for record in logged]
    assert drop_time == [{k: v for k, v in record.items() if k != "seconds"} for record in expected]
    assert not [path.name for path in run_dir.iterdir() if path.name.endswith(".tmp")]


def _driven(fault: str, *args) -> subprocess.CompletedProcess:
    """`sertool ARGS` in a process group of its own, with ``fault`` ("SIGINT step 4") injected."""
    return subprocess.run([sys.executable, "-m", "tests.fault_driver", *fault.split(), "--", *map(str, args)],
                          capture_output=True, text=True, timeout=300, start_new_session=True, env=_environment())


def _environment() -> dict[str, str]:
    """This checkout first on the path (the driver is ``tests.fault_driver``), one thread per process."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(item for item in (root, os.environ.get("PYTHONPATH")) if item)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


# ---- signals and kill -9 at every phase, then --resume -------------------------------------------------
@pytest.mark.slow
@case("training", "SIGINT while the corpus is read (before any checkpoint)",
      "stops at once, exit 130, \"the run starts again from step 0. Continue with: sertool train --resume RUN_DIR\"; "
      "`--resume` restarts from `config.yaml`")
@case("training", "SIGTERM during the first optimiser step",
      "the step finishes, `last.pt` is written, exit 143 with the resume command")
@case("training", "`kill -9` right after the checkpoint of an epoch's last step (was: \"epoch 0 is finished\" on every "
      "`--resume`)",
      "resumes")
@case("training", "SIGINT while `last.pt` is being written",
      "the write completes, then the run stops (exit 130)")
@case("training", "`kill -9` while `last.pt` is being written",
      "the previous `last.pt` stays whole; `--resume` removes the temporary")
@case("training", "SIGINT at the end of an epoch, before its validation (was: swallowed with a worker's traceback, "
      "exit 0)",
      "stops before validating, exit 130; the resumed run validates first")
@case("training", "SIGTERM during validation",
      "stops at once, exit 143; `last.pt` keeps the state before the validation")
@case("training", "after all of the above, with a DataLoader worker getting every signal",
      "no traceback from any process; final weights, validation history and `metrics.jsonl` equal an uninterrupted run "
      "bit for bit")
@case("training", "a folder left by `kill -9`, its `.lock` file still there",
      "`--resume` is not blocked: the lock ended with the process (the test's `kill -9` stages)")
def test_training_stop_at_every_phase_then_resume_equals_an_uninterrupted_run(corpus, straight, tmp_path):
    """One run folder, stopped in every phase by SIGINT (Ctrl-C to the process group), SIGTERM (a cluster) or
    SIGKILL, each time resumed; the loader uses a worker process, which gets the signals too. Every stop
    exits with 128 + the signal, one line saying how to resume and no traceback (from a worker either)."""
    run_dir = tmp_path / "run"
    # (fault, who starts, exit status, what last.pt holds afterwards: a step, or None for no last.pt)
    stages = [
        ("SIGINT loading 1", "new", 130, None),  # reading the corpus: nothing saved yet
        ("SIGTERM step 1", "resume", 143, 1),  # the first optimiser step: it finishes, is saved, then stops
        ("SIGKILL saved 4", "resume", -9, 4),  # right after the checkpoint of an epoch's last step
        ("SIGINT checkpoint-write 2", "resume", 130, 6),  # while last.pt of step 6 is written: it completes
        ("SIGKILL checkpoint-write 1", "resume", -9, 6),  # kill -9 mid-write: the old last.pt stays whole
        ("SIGINT step 8", "resume", 130, 8),  # the end of the last epoch, before its validation
        ("SIGTERM validation 1", "resume", 143, 8),  # the validation step 8 still owed
    ]
    for fault, start, status, saved_step in stages:
        args = (["train", "--corpus", corpus, "--out", run_dir, "--num-workers", "1", *TINY] if start == "new"
                else ["train", "--resume", run_dir])
        done = _driven(fault, *args)
        assert done.returncode == status, (fault, done.stderr)
        assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, (fault, done.stderr)
        if status > 0:
            stop_lines = [line for line in done.stderr.splitlines() if line.startswith("interrupted (")]
            assert len(stop_lines) == 1, (fault, done.stderr)
            assert f"Continue with: sertool train --resume {run_dir}" in stop_lines[0], stop_lines
        if saved_step is None:
            assert not (run_dir / "last.pt").exists() and (run_dir / "config.yaml").is_file()
        else:
            assert load_checkpoint(run_dir, name="last.pt")["step"] == saved_step, fault
    final = _driven("SIGINT step 999", "train", "--resume", run_dir)
    assert final.returncode == 0, final.stderr
    assert_same_run(run_dir, straight)


@case("training", "SIGINT / SIGTERM through the CLI in-process",
      "exit 130 / 143, \"RUN_DIR/last.pt holds step N\", the previous signal handlers put back")
def test_training_stop_in_process_names_the_signal_and_exits_with_its_status(corpus, tmp_path, monkeypatch):
    """The same through the CLI in this process: SIGINT → 130, SIGTERM → 143, and the run folder resumes."""
    real_step = loop._Run._optimizer_step

    def signalled(number):
        def optimizer_step(self, group):
            stats = real_step(self, group)
            if self.step == 1:
                os.kill(os.getpid(), number)
            return stats
        return optimizer_step

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    for number, status in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        run_dir = tmp_path / signal.Signals(number).name
        monkeypatch.setattr(loop._Run, "_optimizer_step", signalled(number))
        result = run("train", "--corpus", corpus, "--out", run_dir, "--num-workers", "0", *TINY)
        assert result.exit_code == status, result.output
        assert f"interrupted ({signal.Signals(number).name}); {run_dir / 'last.pt'} holds step 2" in result.output
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # put back
    monkeypatch.setattr(loop._Run, "_optimizer_step", real_step)
    assert run("train", "--resume", tmp_path / "SIGTERM").exit_code == 0


# ---- under torchrun: 2 gloo ranks on the CPU ------------------------------------------------------------
# 16 training utterances in duration-bounded batches: 3 optimiser steps per epoch, whose batches hold 2 or 3
# utterances, not the same on both ranks at each step (so the ranks' dropout draws differ in number too).
DDP = ["--epochs", "2", "--sampling", "whole", "--max-batch-s", "3", "--min-batch-items", "2", "--num-buckets", "4",
       "--accum-steps", "1", "--backbone", "fbank", "--fbank-dim", "8", "--head-hidden-dim", "8", "--head-dropout",
       "0.3", "--device", "cpu", "--num-workers", "0"]


@pytest.fixture(scope="module")
def ddp_corpus(tmp_path_factory) -> Path:
    return write_learnable_corpus(tmp_path_factory.mktemp("ddp") / "c", per_split={"Train": 16, "Development": 4})


def _torchrun(*args, **variables: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2 ARGS`` in a session of its own (torchrun gives each rank a session too),
    with the fault driver's ``variables`` in the environment."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "--monitor-interval", "0.1", *map(str, args)], capture_output=True, text=True, timeout=300,
                          start_new_session=True, env={**_environment(), **variables})


def _stop_lines(done: subprocess.CompletedProcess, start: str) -> list[str]:
    lines = [line for line in done.stderr.splitlines() if line.startswith(start)]
    assert len(lines) == 2, done.stderr  # one line per rank
    return lines


def _stopped_at_step_two(ddp_corpus, run_dir: Path, **env: str) -> None:
    """A 2-rank torchrun `train` sent SIGTERM at step 2 (``env``: how the fault driver sends it): it stops, every
    rank's message says last.pt holds step 2, and it does."""
    stopped = _torchrun("-m", "tests.fault_driver", "SIGTERM", "step", "2", "--", "train", "--corpus", ddp_corpus,
                        "--out", run_dir, *DDP, **env)
    assert stopped.returncode != 0, stopped.stderr
    claim = f"interrupted (SIGTERM); {run_dir / 'last.pt'} holds step 2. Continue with"
    assert all(line.startswith(claim) for line in _stop_lines(stopped, "interrupted (")), stopped.stderr
    assert load_checkpoint(run_dir, name="last.pt")["step"] == 2


@pytest.mark.slow
@case("training", "SIGTERM to every rank under `torchrun` while rank 0 writes `last.pt` (was: the other ranks exited at "
      "once, torchrun signalled rank 0 again and it stopped mid-write, while every message claimed the new step)",
      "every rank waits until `last.pt` is written; each rank's line names the step it holds; `--resume` continues "
      "from it")
@case("training", "a 2-process run stopped mid-epoch and resumed (was: every rank restored rank 0's random state, so "
      "dropout after the resume differed)",
      "each rank saves and restores its own generators (torch, CUDA, numpy, Python), seeded with seed + rank: final "
      "weights and validations equal an uninterrupted 2-process run bit for bit")
def test_a_ddp_run_stopped_under_torchrun_keeps_what_it_claims_and_resumes_to_the_uninterrupted_run(ddp_corpus,
                                                                                                 tmp_path):
    """Each rank gets SIGTERM at step 2 (mid-epoch, not a checkpoint step) and rank 0 takes 3 s more to write
    last.pt, time enough for torchrun to see a rank that has exited and signal the others again."""
    straight = tmp_path / "straight"
    done = _torchrun("-m", "sertool", "train", "--corpus", ddp_corpus, "--out", straight, *DDP)
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "run"
    _stopped_at_step_two(ddp_corpus, run_dir, FAULT_SLOW_LAST_PT_S="3")
    resumed = _torchrun("-m", "sertool", "train", "--resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 2" in resumed.stdout + resumed.stderr
    a, b = load_checkpoint(run_dir, name="last.pt"), load_checkpoint(straight, name="last.pt")
    assert a["step"] == b["step"] == 6
    assert a["training"]["progress"]["history"] == b["training"]["progress"]["history"]
    for key in b["model_state"]:
        torch.testing.assert_close(a["model_state"][key], b["model_state"][key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
@case("training", "SIGTERM to every process of a `torchrun` job, torchrun included, as a scheduler sends it (was: each "
      "rank got it twice, from the scheduler and from torchrun, and the second stopped it at once, without `last.pt`)",
      "under DDP only the first signal counts: the ranks stop at the step's end with `last.pt`, as from one signal")
def test_a_ddp_run_signalled_twice_under_torchrun_stops_once_with_its_checkpoint(ddp_corpus, tmp_path):
    _stopped_at_step_two(ddp_corpus, tmp_path / "run", FAULT_SIGNAL_LAUNCHER="1")


# ---- concurrent commands on one run folder -------------------------------------------------------------
@case("training", "a second `train --out`, `--out --force` or `--resume` on a folder in use",
      "refused with one line naming the holder's pid and host; no file touched")
def test_training_a_run_folder_in_use_is_refused_to_every_second_command(corpus, straight, tmp_path):
    """While one `train` holds the folder, a second --out (with or without --force) and a --resume refuse
    with one line and leave every file as it was."""
    from sertool.training.run_folder import locked_run_folder

    run_dir = tmp_path / "busy"
    shutil.copytree(straight, run_dir)
    before = {path.name: path.read_bytes() for path in run_dir.iterdir()}
    with locked_run_folder(run_dir, create=False, warn=print) as record_holder:
        record_holder()
        for args in (["--out", run_dir, "--corpus", corpus, "--force"], ["--out", run_dir, "--corpus", corpus],
                     ["--resume", run_dir]):
            line = one_line_error(run("train", *args, "--num-workers", "0", *TINY[:2]) if "--resume" not in args
                                  else run("train", *args))
            assert f"{run_dir}: in use by another `sertool train` (pid {os.getpid()} on" in line, line
    assert {path.name: path.read_bytes() for path in run_dir.iterdir() if path.name != ".lock"} == \
        {name: data for name, data in before.items() if name != ".lock"}


@case("training", "two trainings started on one `--out` (was: both \"succeeded\", a mixed folder)",
      "the second refuses; the first ends with one run's files")
def test_training_two_trainings_into_one_folder_at_once_one_refuses(corpus, tmp_path):
    """Two real processes started on one --out: exactly one trains, the other refuses with one line."""
    run_dir = tmp_path / "shared"
    # The first process holds still in its first step (SIGSTOP to itself) while the second one starts.
    first = subprocess.Popen([sys.executable, "-m", "tests.fault_driver", "SIGSTOP", "step", "1", "--", "train",
                              "--corpus", str(corpus), "--out", str(run_dir), "--num-workers", "0", *TINY],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             env=_environment())
    try:
        deadline = 120
        while deadline and not _stopped(first.pid):
            deadline -= 1
            subprocess.run(["sleep", "0.5"])
        assert _stopped(first.pid), "the first training never reached its first step"
        line = one_line_error(run("train", "--corpus", corpus, "--out", run_dir, "--force", "--num-workers", "0",
                                  *TINY))
        assert "in use by another `sertool train`" in line
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert load_checkpoint(run_dir, name="last.pt")["step"] == STEPS
    assert len((run_dir / "argv.txt").read_text().splitlines()) == 1  # one run, not two mixed


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "T"
    except OSError:
        return False


@case("training", "`train --force` into a finished run, stopped once its set-up is done, before its first checkpoint",
      "the old run's last.pt, best.pt and logs are gone, the user's own files stay (a --resume cannot continue the "
      "old run)")
def test_training_force_removes_the_previous_runs_files_once_set_up(corpus, straight, tmp_path, monkeypatch):
    run_dir = tmp_path / "again"
    shutil.copytree(straight, run_dir)
    (run_dir / "notes.txt").write_text("mine")
    real_setup_state = loop._Run._setup_state

    def interrupted_after_set_up(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real_setup_state(self, *args, **kwargs)

    monkeypatch.setattr(loop._Run, "_setup_state", interrupted_after_set_up)
    result = run("train", "--corpus", corpus, "--out", run_dir, "--force", "--num-workers", "0", *TINY, "--seed", "7")
    assert result.exit_code == 130 and "starts again from step 0" in result.output
    assert sorted(path.name for path in run_dir.iterdir()) == [".lock", "argv.txt", "config.yaml", "notes.txt"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == 7


@case("training", "`train --force` into a finished run, stopped while it reads its data",
      "exit 130, 'still holds its previous run, unchanged'; every file of the previous run as it was")
def test_training_force_keeps_the_previous_run_until_set_up_is_done(corpus, straight, tmp_path, monkeypatch):
    run_dir = tmp_path / "again"
    shutil.copytree(straight, run_dir)
    before = _snapshot(run_dir)
    real_open = loop.open_corpus

    def interrupted_while_loading(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(loop, "open_corpus", interrupted_while_loading)
    result = run("train", "--corpus", corpus, "--out", run_dir, "--force", "--num-workers", "0", *TINY, "--seed", "7")
    assert result.exit_code == 130 and "still holds its previous run, unchanged" in result.output
    assert _snapshot(run_dir) == before


@case("training", "`train --out RUN --force --valid-split Dev` (a typo) on a finished run",
      "one line listing the splits there are; best.pt, last.pt and the logs of RUN untouched")
def test_training_force_with_a_bad_input_leaves_the_previous_run_whole(corpus, straight, tmp_path):
    run_dir = tmp_path / "again"
    shutil.copytree(straight, run_dir)
    before = _snapshot(run_dir)
    result = run("train", "--corpus", corpus, "--out", run_dir, "--force", "--num-workers", "0", *TINY,
                 "--valid-split", "Dev")
    assert result.exit_code == 2 and "splits present" in result.output and "Traceback" not in result.output
    assert _snapshot(run_dir) == before


@case("training", "`train --init-from RUN --out RUN --force`",
      "refused before any work: RUN/best.pt is what --force would delete; it says to export it first")
def test_training_force_never_deletes_the_weights_it_starts_from(corpus, straight, tmp_path):
    run_dir = tmp_path / "again"
    shutil.copytree(straight, run_dir)
    before = _snapshot(run_dir)
    for start in (run_dir, run_dir / "best.pt"):
        result = run("train", "--corpus", corpus, "--out", run_dir, "--force", "--num-workers", "0", *TINY,
                     "--init-from", start)
        assert result.exit_code == 2 and "sertool export" in result.output and "Traceback" not in result.output
        assert _snapshot(run_dir) == before


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (but the lock, which each train rewrites) and its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != ".lock"}


# ---- damaged run folders --------------------------------------------------------------------------------
@case("training", "`config.yaml` edited, deleted, or replaced by undecodable bytes before `--resume` (was: silently "
      "ignored)",
      "one warning line naming the keys (`train.epochs 9 (last.pt: 2)`), `config.yaml` rewritten to `last.pt`'s config")
@pytest.mark.parametrize("damage", ["edited", "deleted", "utf16-garbage"])
def test_training_config_yaml_other_than_last_pt_is_named_and_rewritten(finished, damage):
    """last.pt's config is the one --resume continues with; a config.yaml that says otherwise is named in
    one warning line and rewritten, so the folder never shows settings the run did not use."""
    path = finished / "config.yaml"
    original = path.read_text()
    if damage == "edited":
        path.write_text(original.replace("head_dropout: 0.3", "head_dropout: 0.1").replace("epochs: 2", "epochs: 9"))
    elif damage == "deleted":
        path.unlink()
    else:
        path.write_bytes(b"\xff\xfe" + "train: [unclosed".encode("utf-16-le"))
    result = run("train", "--resume", finished)
    assert result.exit_code == 0, result.output
    # (The tiny run's heads are near-constant, which adds a collapse warning; only config.yaml's counts here.)
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: ") and "config.yaml" in line]
    assert len(warnings) == 1, result.output
    expected = {"edited": "model.head_dropout 0.1 (last.pt: 0.3), train.epochs 9 (last.pt: 2)",
                "deleted": "was missing; restored from last.pt", "utf16-garbage": "is unreadable"}[damage]
    assert expected in warnings[0]
    assert path.read_text() == original


@case("training", "`last.pt` truncated, a copy of `best.pt`, or with a damaged training state",
      "one line naming it and the `--config RUN_DIR/config.yaml --out RUN_DIR --force` way to start over")
@pytest.mark.parametrize("damage", ["truncated", "best-copy", "not-a-dict-state"])
def test_training_damaged_last_pt_is_one_line_that_says_how_to_start_over(finished, damage):
    last = finished / "last.pt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:1000])
    elif damage == "best-copy":
        shutil.copy(finished / "best.pt", last)
    else:
        payload = torch.load(last, weights_only=True)
        payload["training"]["progress"] = "garbage"
        torch.save(payload, last)
    line = one_line_error(run("train", "--resume", finished))
    assert str(last) in line
    if damage != "best-copy":
        assert f"--config {finished / 'config.yaml'} --out {finished} --force" in line


@case("training", "`metrics.jsonl` with binary garbage, non-record JSON and a torn line",
      "`--resume` keeps the good records; the run equals an uninterrupted one")
def test_training_damaged_metrics_jsonl_is_cleaned_on_resume(corpus, straight, tmp_path):
    """Binary garbage, JSON that is not a record, and a torn line in metrics.jsonl: resume keeps the good
    records and the run ends equal to an uninterrupted one."""
    run_dir = tmp_path / "run"
    stopped = _driven("SIGINT step 5", "train", "--corpus", corpus, "--out", run_dir, "--num-workers", "0", *TINY)
    assert stopped.returncode == 130, stopped.stderr
    with open(run_dir / "metrics.jsonl", "ab") as handle:
        handle.write(b"\xff\xfe\x00garbage\n[1, 2]\n7\n{\"type\": \"tra")
    assert run("train", "--resume", run_dir).exit_code == 0
    assert_same_run(run_dir, straight)


@case("training", "disk full while `last.pt` is written",
      "one line naming `last.pt`; the previous one whole, no temporary left")
def test_training_disk_full_while_writing_last_pt_keeps_the_previous_one(finished, monkeypatch):
    """A full disk at a checkpoint: one line naming last.pt; the previous last.pt is whole and resumes."""
    state = load_checkpoint(finished, name="last.pt")
    state["training"]["progress"]["stopped"] = None  # killed before it recorded that it had finished
    torch.save(state, finished / "last.pt")
    before = (finished / "last.pt").read_bytes()
    real_replace = os.replace

    def full(source, target):
        if Path(target).name == "last.pt":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", full)
    line = one_line_error(run("train", "--resume", finished))
    assert "last.pt: write failed (No space left on device)" in line
    assert (finished / "last.pt").read_bytes() == before
    assert not [path.name for path in finished.iterdir() if path.name.endswith(".tmp")]


@case("training", "`--resume` of a run that has ended",
      "\"the run had already ended (…); nothing to train\", exit 0, no file changed")
def test_training_resume_of_a_finished_run_changes_nothing(finished):
    before = {name: (finished / name).read_bytes() for name in ("best.pt", "last.pt", "metrics.jsonl")}
    result = run("train", "--resume", finished)
    assert result.exit_code == 0 and "the run had already ended (finished after 8 steps); nothing to train" \
        in result.output
    assert {name: (finished / name).read_bytes() for name in before} == before


# ---- paths ----------------------------------------------------------------------------------------------
@case("training", "`--resume` from another directory of a run started with a relative `--corpus` (was: the corpus was "
      "not found)",
      "works: paths are stored absolute")
@case("training", "corpus moved, `--resume` without `--corpus` / with `--corpus NEW` / with other data / with "
      "`--epochs`",
      "\"pass --corpus ROOT as well\" / resumes, equal to an uninterrupted run / \"not the data this run trained on\" "
      "/ \"drop --epochs\"")
def test_training_resume_from_another_directory_and_with_a_moved_corpus(corpus, straight, tmp_path, monkeypatch):
    """A run started with a relative --corpus resumes from any directory; a moved corpus is given again with
    --corpus, and other data under that name is refused."""
    shutil.copytree(corpus, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    stopped = _driven("SIGINT step 3", "train", "--corpus", "data", "--out", "run", "--num-workers", "0", *TINY)
    assert stopped.returncode == 130, stopped.stderr
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["corpus"] == str(tmp_path / "data")
    (tmp_path / "data").rename(tmp_path / "moved")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert "pass --corpus ROOT as well" in one_line_error(run("train", "--resume", "../run"))
    other = write_learnable_corpus(tmp_path / "other", per_split={"Train": 8, "Development": 4}, seed=5)
    assert "not the data this run trained on" in one_line_error(run("train", "--resume", "../run", "--corpus", other))
    assert "drop --epochs" in one_line_error(run("train", "--resume", "../run", "--corpus", "../moved", "--epochs", "3"))
    result = run("train", "--resume", "../run", "--corpus", "../moved")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["corpus"] == str(tmp_path / "moved")
    assert_same_run(tmp_path / "run", straight)


@case("training", "`--out` is a file, or lies under a file; `--resume` of a missing or empty folder",
      "one line naming the path")
@pytest.mark.parametrize("case", ["out-is-a-file", "out-under-a-file", "resume-missing", "resume-not-a-run"])
def test_training_hostile_run_folder_paths_are_one_line(corpus, tmp_path, case):
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    args = {"out-is-a-file": ["--out", tmp_path / "file", "--corpus", corpus],
            "out-under-a-file": ["--out", tmp_path / "file" / "run", "--corpus", corpus],
            "resume-missing": ["--resume", tmp_path / "nowhere"],
            "resume-not-a-run": ["--resume", tmp_path / "empty"]}[case]
    line = one_line_error(run("train", *args))
    assert str(args[1]) in line
    assert (tmp_path / "file").read_text() == "not a folder"


@case("training", "run folder with spaces and non-ASCII characters",
      "works")
def test_training_run_folder_with_spaces_and_unicode_works(corpus, tmp_path):
    run_dir = tmp_path / "my runs" / "ünïcode run"
    result = run("train", "--corpus", corpus, "--out", run_dir, "--num-workers", "0", *TINY, "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert (run_dir / "best.pt").is_file()


# ---- numbers --------------------------------------------------------------------------------------------
@case("guards", "`--lr-heads nan`, `--head-dropout 1.5`, `--fbank-dim 0`, `--num-workers -1`, `--epochs 100000`, "
      "`--seed -1`, `--max-duration-s 0.01`, `--aux-weight 1e400`, … (was: NaN runs \"finished\", or a ValueError "
      "traceback)",
      "click's usage error naming the flag and the allowed values, exit 2, nothing created")
@pytest.mark.parametrize(("flag", "value"), [
    ("--lr-heads", "nan"), ("--lr-backbone", "-inf"), ("--head-dropout", "1.5"), ("--head-dropout", "1"),
    ("--fbank-dim", "0"), ("--num-workers", "-1"), ("--epochs", "-1"), ("--epochs", "100000"), ("--seed", "-1"),
    ("--max-steps", "-1"), ("--min-batch-items", "-1"),
    ("--max-duration-s", "0.01"), ("--warmup-fraction", "1"), ("--log-every-steps", "0"), ("--max-batch-s", "inf"),
    ("--aux-weight", "1e400"), ("--accum-steps", "2.5"),
])
def test_training_non_finite_or_absurd_flags_are_refused_before_any_work(corpus, tmp_path, flag, value):
    usage_error(run("train", "--corpus", corpus, "--out", tmp_path / "run", flag, value), flag)
    assert not (tmp_path / "run").exists()


@case("values", "`.nan`, `.inf`, `1.0e+400`, out-of-range values in a `--config` YAML",
      "one line naming the file, the key and the allowed values")
@pytest.mark.parametrize(("yaml_text", "message"), [
    ("train:\n  lr_heads: .nan\n", "train.lr_heads must be a finite number, got nan"),
    ("train:\n  lr_heads: .inf\n", "train.lr_heads must be a finite number, got inf"),
    ("train:\n  weight_decay: 1.0e+400\n", "train.weight_decay must be a finite number, got inf"),
    ("model:\n  head_dropout: 1.5\n", "model.head_dropout must be in [0, 1), got 1.5"),
    ("train:\n  accum_steps: 0\n", "train.accum_steps must be in [1, 4096], got 0"),
    ("seed: 99999999999999999999999\n", "seed must be in [0, 9223372036854775807]"),
])
def test_training_non_finite_or_absurd_yaml_values_name_file_and_key(tmp_path, yaml_text, message):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml_text)
    line = one_line_error(run("train", "--config", config_file, "--out", tmp_path / "run"))
    assert f"--config {config_file}: {message}" in line
    assert not (tmp_path / "run").exists()


@case("values", "a `Config` built in code with NaN",
      "`SertoolError` before the run folder is created")
def test_training_a_config_built_in_code_is_checked_too(corpus, tmp_path):
    config = Config()
    config.data.corpus = str(corpus)
    config.train.lr_heads = float("nan")
    from sertool.core.errors import SertoolError

    with pytest.raises(SertoolError, match="train.lr_heads must be a finite number"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@case("guards", "a `--config` in UTF-16 (bytes FF FE) or UTF-8 with a byte-order mark (was: UnicodeDecodeError)",
      "read")
@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "utf-16-be"])
def test_training_yaml_config_with_a_byte_order_mark_is_read(tmp_path, encoding):
    config_file = tmp_path / "c.yaml"
    text = "model:\n  backbone: fbank\ntrain:\n  epochs: 3  # ü\n"
    config_file.write_bytes(("\ufeff" + text if encoding == "utf-16-be" else text).encode(encoding))
    config = Config.from_yaml(config_file)
    assert config.model.backbone == "fbank" and config.train.epochs == 3


@case("guards", "`predict --window-s nan` / `0.1`, `--hop-s 0`, `--batch-s -5`, `--num-workers -1`, `--weights 1,nan` "
      "/ `0.5,-1` / `0.5,x`, `data speakers --per-speaker 0` / `--num-speakers 1` / `--seed -1`, `data manifest "
      "--dev-fraction 2` / `--test-fraction nan` / `--label-range 0 inf`, `data demo --seed -1` (was: tracebacks, or a "
      "Fisher ratio of inf)",
      "click's usage error naming the flag")
@pytest.mark.parametrize("args", [
    ["predict", "RUN", "x.wav", "--window-s", "nan"], ["predict", "RUN", "x.wav", "--window-s", "0.1"],
    ["predict", "RUN", "x.wav", "--hop-s", "0"], ["predict", "RUN", "x.wav", "--batch-s", "-5"],
    ["evaluate", "RUN", "--corpus", "C", "--num-workers", "-1"], ["evaluate", "RUN", "--corpus", "C", "--batch-s", "inf"],
    ["ensemble", "RUN", "RUN", "--corpus", "C", "--weights", "1,nan"],
    ["ensemble", "RUN", "RUN", "--corpus", "C", "--weights", "0.5,-1"],
    ["ensemble", "RUN", "RUN", "--corpus", "C", "--weights", "0.5,x"],
    ["data", "speakers", "--corpus", "C", "--out", "x.png", "--per-speaker", "0"],
    ["data", "speakers", "--corpus", "C", "--out", "x.png", "--num-speakers", "1"],
    ["data", "speakers", "--corpus", "C", "--out", "x.png", "--seed", "-1"],
    ["data", "manifest", "F", "M", "--out", "x.csv", "--dev-fraction", "2"],
    ["data", "manifest", "F", "M", "--out", "x.csv", "--test-fraction", "nan"],
    ["data", "manifest", "F", "M", "--out", "x.csv", "--label-range", "0", "inf"],
    ["data", "demo", "OUT", "--seed", "-1"],
])
def test_training_numeric_flags_of_every_command_share_the_check(straight, corpus, tmp_path, args):
    """The same finite, bounded number check guards the hand-written numeric flags of every command."""
    args = [str(straight) if arg == "RUN" else str(corpus) if arg == "C" else arg for arg in args]
    flag = next(arg for arg in reversed(args) if arg.startswith("--") and arg not in ("--corpus", "--out"))
    usage_error(run(*args), flag)
    assert not (tmp_path / "OUT").exists()


# ---- numbers in data ------------------------------------------------------------------------------------
@case("training", "a Development clip with samples ×1e30 (every validation NaN; was: \"finished\", exit 0, no "
      "`best.pt`)",
      "the audio reader refuses it (over 100× full scale, as for every command): the first validation stops with one "
      "line naming the clip; no `summary.json`; `--resume` says the same")
def test_training_a_development_clip_that_makes_validation_nan_is_an_error_naming_it(corpus, tmp_path):
    """A float WAV with huge finite samples (×1e30) in Development made every validation NaN; the run must
    not say "finished" with exit 0 and no best.pt, but name the clip. The audio reader refuses such samples
    for every command (sertool.data.audio.MAX_ABS_SAMPLE), so the first validation stops on it."""
    data = tmp_path / "c"
    shutil.copytree(corpus, data)
    victim = sorted((data / "Audios").glob("MSP-PODCAST_0003_*.wav"))[0]
    samples, rate = sf.read(victim)
    sf.write(victim, (samples * 1e30).astype(np.float32), rate, subtype="FLOAT")
    result = run("train", "--corpus", data, "--out", tmp_path / "run", "--num-workers", "0", *TINY)
    line = one_line_error(result)
    assert victim.name in line and "over 100× full scale" in line
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "summary.json").exists()
    assert one_line_error(run("train", "--resume", tmp_path / "run")) == line  # resuming says it again


@case("training", "weights that diverge (every validation NaN)",
      "a warning per validation naming the first clip, then one error line: \"no validation of this run gave a finite "
      "CCC … every prediction was NaN\"; `metrics.jsonl` stays strict JSON; `--resume` says the same (validation takes "
      "`run_model`'s outputs with `finite_only=False` and applies this policy itself)")
def test_training_validations_that_are_never_finite_end_in_an_error_naming_the_cause(corpus, tmp_path, monkeypatch):
    """Weights that diverged (here: NaN weights while validating) give no best.pt; the run must not say
    "finished" with exit 0, but say why, and resuming says it again. Validation takes the NaN outputs of
    run_model as they are (finite_only=False) and applies this policy."""
    real_run_model = loop.run_model

    def with_nan_weights(model, *args, **kwargs):
        saved = {name: value.clone() for name, value in model.state_dict().items()}
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(float("nan"))
        try:
            return real_run_model(model, *args, **kwargs)
        finally:
            model.load_state_dict(saved)

    monkeypatch.setattr(loop, "run_model", with_nan_weights)
    result = run("train", "--corpus", corpus, "--out", tmp_path / "run", "--num-workers", "0", *TINY)
    line = one_line_error(result)
    assert "no validation of this run gave a finite CCC" in line and "every prediction was NaN" in line
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "summary.json").exists()
    # Three validations: before the first step (the fbank recipe blends the network with the floor, and
    # validates it then) and after each epoch; every one sees the network's NaN outputs.
    assert result.output.count("predictions are not finite (first: ") == 3
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [record["ccc_average"] for record in logged if record["type"] == "valid"] == [None] * 3  # strict JSON
    assert one_line_error(run("train", "--resume", tmp_path / "run")) == line  # resuming says it again


@case("values", "labels `nan`, `inf`, `1e308` in training rows",
      "rows dropped and counted; the run's scores are finite")
def test_training_labels_nan_inf_and_huge_are_dropped_not_trained_on(corpus, tmp_path):
    data = tmp_path / "c"
    shutil.copytree(corpus, data)
    labels = data / "Labels" / "labels_consensus.csv"
    lines = labels.read_text().splitlines()
    for row, value in zip((1, 2, 3), ("nan", "inf", "1e308"), strict=True):
        fields = lines[row].split(",")
        fields[2] = value
        lines[row] = ",".join(fields)
    labels.write_text("\n".join(lines) + "\n")
    result = run("train", "--corpus", data, "--out", tmp_path / "run", "--num-workers", "0", *TINY[:2],
                 "--batch-size", "2", "--backbone", "fbank", "--fbank-dim", "8", "--head-hidden-dim", "8")
    assert result.exit_code == 0, result.output
    assert "dropped 3 rows" in result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert all(np.isfinite(value) for value in summary["best"].values())
