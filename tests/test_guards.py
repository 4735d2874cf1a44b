"""The guards (sertool.guards): outputs declared and committed in one place, user files read through one, every
failure surfaced as one line. Each finding of the hostile-input review that these guards close is a test here."""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import sertool
from sertool.cache.items import cache_root
from sertool.cli.commands import cli
from sertool.core.errors import SertoolError
from sertool.guards.outputs import OutputPlan, atomic_write, plain_name
from sertool.guards.reads import MAX_CONFIG_BYTES, open_user_file
from sertool.inference.predictions import read_predictions
from tests.cases import case
from tests.corpus_files import write_learnable_corpus, write_msp_corpus, write_tone
from tests.systems import small_config
from tests.test_reliability import one_line_error, run

LONG_NAME = "x" * 300  # over the 255 bytes a name may have on every common file system


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> tuple[Path, Path]:
    """A corpus and a finished run folder trained on it."""
    from sertool.training.loop import train

    folder = tmp_path_factory.mktemp("guards")
    corpus = write_learnable_corpus(folder / "corpus", per_split={"Train": 12, "Development": 6, "Test1": 4})
    train(small_config(corpus, epochs=1), folder / "run")
    return corpus, folder / "run"


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes: what a refused command must leave as it was."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@contextlib.contextmanager
def no_hang(seconds: int = 30):
    """Fail (instead of hanging the suite) when the block blocks, e.g. on a pipe it should have refused."""
    def expired(signum, frame):
        raise AssertionError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---- outputs: declared before any work ----------------------------------------------------------------------

@case("guards", "two outputs of one command on one path (`evaluate --out s.json --scores s.json`, `ensemble --save "
      "e.json --scores e.json`, `predict --out x.csv --submission x.csv`, the same file spelt two ways)",
      "one line naming both flags, before any work; nothing written (before: the second silently replaced the first "
      "and \"wrote\" was printed twice)")
@pytest.mark.parametrize("outputs", [
    ("evaluate", "--out", "s.json", "--scores", "s.json"),
    ("evaluate", "--out", "s.csv", "--plot", "sub/../s.csv"),
    ("ensemble", "--save", "e.json", "--scores", "e.json"),
    ("ensemble", "--out", "x.csv", "--submission", "./x.csv"),
    ("predict", "--out", "x.csv", "--submission", "x.csv"),
])
def test_two_outputs_on_one_path_are_refused_before_any_work(system, tmp_path, monkeypatch, outputs):
    corpus, run_dir = system
    command, *flags = outputs
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    models = [run_dir, run_dir] if command == "ensemble" else [run_dir]
    split = ["--split", "Test1"] if command != "evaluate" else []
    result = run(command, *models, "--corpus", corpus, *split, *flags)
    line = one_line_error(result)
    assert "the same path as" in line and flags[0] in line and flags[2] in line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sub"]


@case("guards", "a file created at an output's path by another command while this one works",
      "the commit fails in one line (\"appeared while this command ran\"); the other command's file is left as it "
      "was, no temporary remains; with --force it is replaced")
def test_an_output_that_appears_meanwhile_is_never_replaced(tmp_path):
    outputs = OutputPlan()
    target = outputs.file(tmp_path / "out.csv", flag="--out")
    assert target is not None
    target.write_text("someone else's")  # another command got there between the check and the commit
    with pytest.raises(SertoolError, match="appeared while this command ran"):
        with outputs.writing(target) as handle:
            handle.write("mine")
    assert target.read_text() == "someone else's"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.csv"]  # no temporary left behind
    forced = OutputPlan(force=True)
    with forced.writing(forced.file(target, flag="--out")) as handle:  # type: ignore[arg-type]
        handle.write("mine")
    assert target.read_text() == "mine"


def test_an_undeclared_output_is_a_programming_error(tmp_path):
    with pytest.raises(AssertionError, match="not declared"):
        with OutputPlan().writing(tmp_path / "x.csv"):
            pass


@pytest.mark.slow
@case("guards", "two `sertool export` runs at once into one --out",
      "exactly one succeeds; the other ends in one line (folder in use, or the file appeared meanwhile) and the "
      "folder holds one whole export (before: both exited 0, one silently replaced the other)")
def test_two_racing_exports_cannot_both_succeed(system, tmp_path):
    _, run_dir = system
    command = [sys.executable, "-m", "sertool", "export", str(run_dir), "--out"]
    for attempt in range(3):
        out = tmp_path / f"model{attempt}"
        racers = [subprocess.Popen([*command, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for _ in range(2)]
        results = [(racer.wait(timeout=300), *racer.communicate()) for racer in racers]
        assert sorted(code for code, _, _ in results) == [0, 2], results
        loser = next(stderr for code, _, stderr in results if code == 2)
        assert "Traceback" not in loser and loser.count("error: ") == 1
        assert sertool.load(out).predict(np.zeros(16_000, dtype=np.float32) + 0.01, sample_rate=16_000)


@case("guards", "`sertool baseline` on a manifest whose split names are `../../../x`, `/tmp/x` or `a/b`",
      "each split's CSV is written inside --out under a plain name (`_.._.._.._x.csv`); nothing outside --out (before: "
      "files written wherever the split name pointed)")
def test_split_names_from_data_stay_inside_out(tmp_path):
    corpus = write_learnable_corpus(tmp_path / "c", per_split={"Train": 8, "Development": 6, "Test1": 6})
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.parent.mkdir()
    lines = ["path,split,arousal,valence,dominance,speaker,gender"]
    from sertool.data.corpus import open_corpus

    hostile = ["../../../escaped", str(tmp_path / "absolute"), "a/b"]
    renamed = iter(hostile * 2)  # the six Test1 utterances become three hostile splits
    for utt in open_corpus(corpus).utterances:
        split = next(renamed) if utt.split == "Test1" else utt.split
        lines.append(f"{utt.audio_path},{split},{utt.arousal},{utt.valence},{utt.dominance},{utt.speaker},"
                     f"{utt.gender}")
    manifest.write_text("\n".join(lines) + "\n")
    before = {path for path in tmp_path.rglob("*")}
    out = tmp_path / "data" / "floor"
    result = run("baseline", "--corpus", manifest, "--out", out, "--num-workers", "0")
    assert result.exit_code == 0, result.output
    created = {path for path in tmp_path.rglob("*")} - before
    assert all(path == out or out in path.parents for path in created), created
    names = sorted(path.name for path in out.iterdir())
    assert names == sorted([*(plain_name(split + ".csv") for split in hostile), "Development.csv", "summary.json"])
    assert "_.._.._.._escaped.csv" in names and "a_b.csv" in names


def test_plain_names_keep_data_inside_their_folder():
    for name in ("..", ".", "../x", "/etc/passwd", "a/b", "a\\b", "x\0y", "", ".hidden", "ok.csv"):
        plain = plain_name(name)
        assert plain and "/" not in plain and "\0" not in plain and not plain.startswith(".")
        assert Path(plain).name == plain
    assert plain_name("ok.csv") == "ok.csv"


@case("guards", "a 300-character name for --out (`predict`, `train`, `export`, `evaluate --plot`)",
      "one line naming the flag and the file system's limit, before any work (before: `OSError: File name too long` "
      "after the work)")
@pytest.mark.parametrize("command", ["predict", "train", "export", "evaluate"])
def test_a_name_too_long_for_the_file_system_is_refused_first(system, tmp_path, monkeypatch, command):
    corpus, run_dir = system
    monkeypatch.chdir(tmp_path)
    arguments = {
        "predict": ["predict", run_dir, "--corpus", corpus, "--split", "Test1", "--out", LONG_NAME + ".csv"],
        "train": ["train", "--corpus", corpus, "--backbone", "fbank", "--epochs", "1", "--out", LONG_NAME],
        "export": ["export", run_dir, "--out", LONG_NAME],
        "evaluate": ["evaluate", run_dir, "--corpus", corpus, "--plot", LONG_NAME + ".png"],
    }[command]
    line = one_line_error(run(*arguments))
    assert "bytes long" in line and "choose a shorter" in line
    assert list(tmp_path.iterdir()) == []


@case("guards", "--out under a file (`notes.txt/deeper/p.csv`) or in a read-only folder",
      "one line naming --out and the parent, before any work")
@pytest.mark.parametrize(("kind", "message"), [("file", "a file, not a folder"), ("readonly", "cannot write in")])
def test_a_parent_that_cannot_hold_the_output_is_refused_first(system, tmp_path, kind, message):
    corpus, run_dir = system
    parent = tmp_path / "parent"
    if kind == "file":
        parent.write_text("a file")
    else:
        parent.mkdir()
        parent.chmod(0o500)
        if os.access(parent, os.W_OK):  # root writes anywhere: nothing to refuse
            pytest.skip("running as root")
    try:
        line = one_line_error(run("predict", run_dir, "--corpus", corpus, "--split", "Test1",
                                  "--out", parent / "deeper" / "p.csv"))
    finally:
        if kind == "readonly":
            parent.chmod(0o700)
    assert message in line and "--out" in line


@case("guards", "`--out /dev/null`, or a folder, where a file is to go", "one line: not a regular file / a folder is "
      "there; the device or folder untouched (with --force too)")
def test_an_output_onto_a_device_or_a_folder_is_refused(system, tmp_path):
    corpus, run_dir = system
    (tmp_path / "folder.csv").mkdir()
    for target, message in (("/dev/null", "not a regular file"), (tmp_path / "folder.csv", "a folder is there")):
        line = one_line_error(run("predict", run_dir, "--corpus", corpus, "--split", "Test1", "--out", target,
                                  "--force"))
        assert message in line
    assert Path("/dev/null").is_char_device()


@case("guards", "`--out /`, `--out ~`, `--cache-dir /`, `--feature-cache ~` with --force: the file system's root or "
      "the home folder as the folder a command fills", "one line: give a folder of its own; nothing written there "
      "(before: `export --out / --force` wrote config.json, README.md and model.safetensors into /)")
def test_the_root_or_the_home_folder_is_no_folder_to_fill(system, tmp_path, monkeypatch):
    corpus, run_dir = system
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for command in (["export", run_dir, "--out", "~", "--force"], ["data", "demo", str(home), "--force"],
                    ["baseline", "--corpus", corpus, "--out", home, "--force"],
                    ["train", "--corpus", corpus, "--backbone", "fbank", "--out", "~", "--force"],
                    ["data", "info", corpus, "--cache-dir", "~"]):
        line = one_line_error(run(*command))
        assert f"{home}" in line or "~" in line, line
        assert "your home folder itself; give a folder of its own" in line, line
    assert list(home.iterdir()) == []
    for folder in ("/", home):  # the root is refused by the same check before anything is created (not run here)
        with pytest.raises(SertoolError, match="give a folder of its own"):
            OutputPlan(force=True).folder(folder, flag="--out")
        with pytest.raises(SertoolError, match=r"--cache-dir .*give a folder of its own"):
            cache_root(folder)
    assert OutputPlan(force=True).folder(home / "sertool", flag="--out") == home / "sertool"
    assert cache_root(home / "cache") == home / "cache"


@case("guards", "`data demo` on a disk that fills up during the writing",
      "one line naming the file and \"No space left\"; nothing the run wrote is left, no clip, no temporary, no "
      "folder (before: a partial WAV under its final name and a LibsndfileError traceback; then: the clips "
      "written so far, so that the retry needed --force)")
def test_a_full_disk_while_the_demo_corpus_is_written(tmp_path, monkeypatch):
    pytest.importorskip("espeakng_loader")
    from sertool.guards import outputs

    real_fsync = outputs.os.fsync
    calls = {"count": 0}

    def fsync(descriptor):
        calls["count"] += 1
        if calls["count"] == 7:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(descriptor)

    monkeypatch.setattr(outputs.os, "fsync", fsync)
    result = run("data", "demo", tmp_path / "corpus", "--size", "tiny")
    line = one_line_error(result)
    assert "No space left on device" in line and calls["count"] == 7
    assert list(tmp_path.iterdir()) == []


# ---- inputs: what a user names is read through the read guard ----------------------------------------------

@case("guards", "a FIFO or a 2 MB file given as --config; a FIFO given as labels file, checkpoint, predictions CSV, "
      "ensemble plan or --transcripts CSV",
      "one line naming the file: not a regular file / more than a config file holds; never a hang")
def test_files_a_user_names_are_regular_files_of_bounded_size(system, tmp_path):
    corpus, run_dir = system
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.yaml"
    huge.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with no_hang():
        for config, message in ((fifo, "not a regular file"), (huge, "more than")):
            line = one_line_error(run("train", "--config", config, "--corpus", corpus, "--out", tmp_path / "r"))
            assert str(config) in line and message in line
        for model in (fifo, tmp_path / "pipe.csv", tmp_path / "pipe.json", tmp_path / "pipe.pt"):
            if model != fifo:
                os.mkfifo(model)
            line = one_line_error(run("evaluate", model, "--corpus", corpus))
            assert "not a regular file" in line
        line = one_line_error(run("predict", run_dir, "--corpus", corpus, "--split", "Test1", "--transcripts", fifo))
        assert "not a regular file" in line
        labels = tmp_path / "fifo-corpus" / "Labels" / "labels_consensus.csv"
        (tmp_path / "fifo-corpus" / "Audios").mkdir(parents=True)
        labels.parent.mkdir()
        os.mkfifo(labels)
        assert "not a regular file" in one_line_error(run("data", "info", tmp_path / "fifo-corpus"))


def test_open_user_file_refuses_before_reading(tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(b"x" * 100)
    with pytest.raises(SertoolError, match="big.csv: 100 bytes, more than a table holds"):
        with open_user_file(path, what="table", max_bytes=99):
            pass
    with open_user_file(path, "rb", what="table", max_bytes=100) as handle:
        assert handle.read() == b"x" * 100
    with pytest.raises(SertoolError, match="missing.csv: table not found"):
        with open_user_file(tmp_path / "missing.csv", what="table", max_bytes=100):
            pass


@case("guards", "an MSP-Podcast labels row whose FileName is `../../elsewhere/a.wav` or an absolute path",
      "the row is dropped, named (\"file name outside the corpus\"); no audio or transcript outside the root is read "
      "(before: every command read them)")
def test_file_names_in_a_labels_file_stay_inside_the_corpus(tmp_path):
    from sertool.data.corpus import open_corpus

    outside = tmp_path / "elsewhere"
    write_tone(outside / "a.wav", duration_s=1.0)
    (outside / "a.txt").write_text("a secret transcript\n")
    rows = [["MSP-PODCAST_0001_0001.wav", "N", "3", "4", "3", "1", "Male", "Train"],
            ["../../elsewhere/a.wav", "N", "3", "4", "3", "1", "Male", "Train"],
            [str(outside / "a.wav"), "N", "3", "4", "3", "1", "Male", "Train"]]
    root = write_msp_corpus(tmp_path / "corpus" / "msp", rows[:1], transcripts={rows[0][0]: "hello"})
    labels = root / "Labels" / "labels_consensus.csv"
    labels.write_text(labels.read_text() + "".join(",".join(row) + "\n" for row in rows[1:]))
    corpus = open_corpus(root)
    assert [utt.id for utt in corpus.utterances] == ["MSP-PODCAST_0001_0001.wav"]
    dropped = [problem for problem in corpus.report.dropped if problem.reason == "file name outside the corpus"]
    assert [problem.where.rsplit(":", 1)[1] for problem in dropped] == ["3", "4"]
    assert all(outside not in Path(utt.audio_path).parents for utt in corpus.utterances)


# ---- what a folder means ------------------------------------------------------------------------------------

@case("checkpoints", "`export RUN --out RUN`, then `train ... --out RUN --force`, then `predict RUN`",
      "a folder holding best.pt means best.pt: the new run's predictions, with one warning naming the stale export "
      "(before: the stale export's predictions, silently)")
def test_a_run_folder_means_its_best_pt_and_a_stale_export_is_named(system, tmp_path, caplog):
    corpus, run_dir = system
    folder = tmp_path / "run"
    import shutil

    shutil.copytree(run_dir, folder)
    assert run("export", folder, "--out", folder).exit_code == 0
    fresh = run("predict", folder, "--corpus", corpus, "--split", "Test1", "--out", tmp_path / "before.csv")
    assert fresh.exit_code == 0 and "stale" not in caplog.text  # the export is of this best.pt
    retrained = run("train", "--corpus", corpus, "--backbone", "fbank", "--epochs", "1", "--num-workers", "0",
                    "--fbank-dim", "16", "--seed", "3", "--out", folder, "--force")
    assert retrained.exit_code == 0, retrained.output
    after = run("predict", folder, "--corpus", corpus, "--split", "Test1", "--out", tmp_path / "after.csv")
    assert after.exit_code == 0 and "stale" in caplog.text and "model.safetensors" in caplog.text
    direct = run("predict", folder / "best.pt", "--corpus", corpus, "--split", "Test1", "--out", tmp_path / "d.csv")
    assert direct.exit_code == 0
    np.testing.assert_array_equal(read_predictions(tmp_path / "after.csv").values,
                                  read_predictions(tmp_path / "d.csv").values)
    assert not np.array_equal(read_predictions(tmp_path / "after.csv").values,
                              read_predictions(tmp_path / "before.csv").values)


# ---- option values: one declaration for the CLI and the API ------------------------------------------------

@case("guards", "`--device cuda` on a machine without CUDA (`train`, `predict`, `evaluate`); API `device=\"cuda\"`, "
      "`device=\"tpu\"`", "one line: no usable CUDA device, use --device cpu or auto / tpu is not one of auto, cpu, "
      "cuda (before: an AssertionError traceback)")
def test_a_device_that_is_not_there_is_one_line(system, tmp_path):
    corpus, run_dir = system
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for arguments in (["train", "--corpus", corpus, "--backbone", "fbank", "--out", tmp_path / "r"],
                      ["predict", run_dir, "--corpus", corpus, "--split", "Test1"],
                      ["evaluate", run_dir, "--corpus", corpus]):
        assert "no usable CUDA device" in one_line_error(run(*arguments, "--device", "cuda"))
    with pytest.raises(SertoolError, match="no usable CUDA device"):
        sertool.load(run_dir, device="cuda")
    with pytest.raises(SertoolError, match="device: tpu is not one of auto, cpu, cuda"):
        sertool.load(run_dir, device="tpu")


@case("guards", "API `predict(w, sample_rate=16000, window_s=nan)`, `hop_s=0`, `window_s=0.1`; `load(threads=-1, "
      "max_batch_s=nan, quantize='int4')`", "SertoolError naming the argument and the values `sertool predict`'s "
      "flag allows (before: ValueError from deep inside)")
def test_api_arguments_are_checked_against_the_flags_declarations(system):
    _, run_dir = system
    model = sertool.load(run_dir)
    waveform = np.random.default_rng(0).normal(0, 0.1, 48_000).astype(np.float32)
    for keyword, value, message in (("window_s", float("nan"), "window_s must be a finite number"),
                                    ("hop_s", 0.0, r"hop_s must be in \[0.05, 3600\]"),
                                    ("window_s", 0.1, r"window_s must be in \[0.25, 3600\]")):
        with pytest.raises(SertoolError, match=message):
            model.predict(waveform, sample_rate=16_000, **{keyword: value})
    for keyword, value, message in (("threads", -1, r"threads must be in \[0, 1024\]"),
                                    ("max_batch_s", float("nan"), "finite"),
                                    ("quantize", "int4", "not one of off, int8"), ("threads", 1.5, "must be int")):
        with pytest.raises(SertoolError, match=message):
            sertool.load(run_dir, **{keyword: value})
    assert sertool.load(Path(run_dir), cache_dir=Path(run_dir).parent / "cache").name == str(run_dir)


# ---- failures: one line each --------------------------------------------------------------------------------

@case("guards", "out of memory in `predict` and `train` (the allocator's RuntimeError, a MemoryError); the same in "
      "`sertool.load(...).predict`", "one line: out of memory, with the flags that lower it; the API raises "
      "SertoolError with that line (before: the allocator's traceback)")
@pytest.mark.parametrize("failure", [RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                                                  "1099511627776 bytes"), MemoryError()])
def test_out_of_memory_is_one_line(system, tmp_path, monkeypatch, failure):
    corpus, run_dir = system
    from sertool.models.ser_model import SERModel

    def exhausted(*args, **kwargs):
        raise failure

    monkeypatch.setattr(SERModel, "forward", exhausted)
    assert "out of memory" in one_line_error(run("predict", run_dir, "--corpus", corpus, "--split", "Test1"))
    assert "out of memory" in one_line_error(run("train", "--corpus", corpus, "--backbone", "fbank", "--epochs", "1",
                                                 "--num-workers", "0", "--out", tmp_path / "r"))
    with pytest.raises(SertoolError, match="out of memory") as caught:
        sertool.load(run_dir).predict(np.zeros(16_000, dtype=np.float32), sample_rate=16_000)
    assert caught.value.__cause__ is failure


def _killed_in_a_worker(real_getitem):
    parent = os.getpid()

    def getitem(self, index):
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer ends a loader worker
        return real_getitem(self, index)
    return getitem


@case("guards", "a DataLoader worker killed with `kill -9` during training",
      "one line: a data-loader worker process died, use fewer --num-workers, `train --resume` continues (before: a "
      "RuntimeError traceback)")
def test_a_dead_loader_worker_is_one_line(system, tmp_path, monkeypatch):
    corpus, _ = system
    from sertool.data.dataset import UtteranceDataset

    monkeypatch.setattr(UtteranceDataset, "__getitem__", _killed_in_a_worker(UtteranceDataset.__getitem__))
    line = one_line_error(run("train", "--corpus", corpus, "--backbone", "fbank", "--epochs", "1", "--num-workers",
                              "1", "--fbank-dim", "16", "--out", tmp_path / "r"))
    assert "data-loader worker process died" in line and "--resume" in line


@case("guards", "an unexpected exception inside any command (a bug)",
      "one line: internal error, a bug, the traceback saved to a named file, how to report it (exit 1); `--debug` "
      "or SERTOOL_DEBUG=1 show the traceback itself")
def test_a_bug_is_one_line_naming_its_saved_traceback(system, monkeypatch):
    corpus, run_dir = system
    from sertool.inference import workflows

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(workflows, "run_evaluate", broken)
    monkeypatch.setenv("SERTOOL_DEBUG", "0")  # so the variable --debug sets is put back (unset) after the test
    result = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--corpus", str(corpus)], catch_exceptions=False)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "internal error, a bug in sertool (ZeroDivisionError: a bug)" in lines[0]
    report = Path(lines[0].split("traceback saved to ", 1)[1].split(". Please", 1)[0])
    try:
        assert "Traceback (most recent call last)" in report.read_text() and "ZeroDivisionError" in report.read_text()
    finally:
        report.unlink()
    shown = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--corpus", str(corpus), "--debug"])
    assert isinstance(shown.exception, ZeroDivisionError)
    monkeypatch.setenv("SERTOOL_DEBUG", "1")
    assert isinstance(CliRunner().invoke(cli, ["evaluate", str(run_dir), "--corpus", str(corpus)]).exception,
                      ZeroDivisionError)


def test_atomic_write_leaves_nothing_on_a_failed_commit(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "x.txt", replace=True) as handle:
            handle.write("half")
            raise RuntimeError("stopped")
    assert list(tmp_path.iterdir()) == []


@case("guards", "an empty output path (`export RUN --out ''`), a NUL byte in a path or any option's text",
      "one line naming the flag (before: the export went into the current folder; a NUL byte was a ValueError)")
def test_empty_paths_and_nul_bytes_are_refused(system, tmp_path, monkeypatch):
    corpus, run_dir = system
    monkeypatch.chdir(tmp_path)
    assert "an empty path" in one_line_error(run("export", run_dir, "--out", ""))
    assert "an empty path" in one_line_error(run("train", "--corpus", corpus, "--out", " "))
    assert "an empty path" in one_line_error(run("train", "--resume", ""))
    assert "NUL byte" in one_line_error(run("plot", run_dir, "--out", "a\0.png"))
    assert "NUL byte" in one_line_error(run("data", "info", corpus, "--cache-dir", "c\0"))
    assert "NUL byte" in one_line_error(run("evaluate", run_dir, "--corpus", corpus, "--split", "Dev\0"))
    assert "NUL byte" in one_line_error(run("train", "--corpus", corpus, "--out", "r", "--valid-split", "D\0"))
    assert list(tmp_path.iterdir()) == []


def _leaf_commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    return [found for name, command in sorted(group.commands.items())
            for found in (_leaf_commands(command, (*path, name)) if isinstance(command, click.Group)
                          else [((*path, name), command)])]


@case("guards", "a NUL byte in any positional argument of any command (`ensemble '' 'a\\0.pt'`, `predict 'm\\0'`)",
      "one line naming the argument, before the command runs (before: an internal error, exit 1)")
@pytest.mark.parametrize("path, command", [
    pytest.param(path, command, id=" ".join(path)) for path, command in _leaf_commands(cli)
    if any(isinstance(param, click.Argument) or param.required for param in command.params)])
def test_a_nul_byte_in_any_argument_is_refused(path, command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arguments = [param for param in command.params if isinstance(param, click.Argument)]
    required = [param for param in command.params if isinstance(param, click.Option) and param.required]
    line = [*path, *(f"{param.name}\0" for param in arguments),
            *(word for param in required for word in (param.opts[0], "x\0"))]
    message = one_line_error(run(*line))
    assert "NUL byte" in message
    assert list(tmp_path.iterdir()) == []


@case("guards", "`train --out '~/run'` (a quoted `~`, or one from a config): the run written where `~` leads, as "
      "every path sertool reads or writes expands it",
      "the run folder under the home folder (before: a folder named `~` in the current one, while --init-from, "
      "--corpus and every output flag expanded it)")
def test_train_expands_the_home_folder_like_every_other_path(system, tmp_path, monkeypatch):
    corpus, _ = system
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    result = run("train", "--corpus", corpus, "--backbone", "fbank", "--fbank-dim", "16", "--head-hidden-dim", "8",
                 "--max-steps", "1", "--num-workers", "0", "--out", "~/run")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "home" / "run" / "best.pt").is_file()
    assert not (tmp_path / "~").exists()
