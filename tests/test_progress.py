"""Progress: every long step reports it, a terminal shows it, a pipe and --quiet get none of it."""
from __future__ import annotations

import contextlib
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import click
import huggingface_hub.utils
import pytest
from click.testing import CliRunner

from sertool.cache.text_embeddings import TextEmbeddingCache
from sertool.cli.commands import cli
from sertool.cli.console import RichTrainReporter, show_progress
from sertool.core import hub, progress
from sertool.data.corpus import open_corpus
from sertool.data.report import LoadReport
from sertool.inference.predictor import InferenceOptions
from sertool.inference.workflows import evaluate
from sertool.models.asr import Transcriber, TranscriptCache
from sertool.models.text import TextEncoder
from sertool.training.loop import train
from sertool.training.reporter import Reporter, Reporters
from tests.corpus_files import write_learnable_corpus, write_tone
from tests.systems import small_config
from tests.tiny_asr import save_tiny_asr
from tests.tiny_text import save_tiny_text_encoder


class Recorder:
    """A display that records each task's description and last (done, total)."""

    drawing = True

    def __init__(self) -> None:
        self.tasks: dict[str, tuple[int, int] | None] = {}

    @contextlib.contextmanager
    def __call__(self, description: str):
        self.tasks[description] = None
        yield lambda done, total: self.tasks.__setitem__(description, (done, total))


@pytest.fixture
def recorder():
    display = Recorder()
    previous = progress.set_display(display)
    yield display
    progress.set_display(previous)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_learnable_corpus(tmp_path_factory.mktemp("corpus") / "c")


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runs") / "run"
    train(small_config(corpus, epochs=1), folder)
    return folder


def test_training_validation_evaluation_and_corpus_scans_report_progress(corpus, recorder, tmp_path):
    utterances = open_corpus(corpus).split("Development")
    train(small_config(corpus, epochs=1), tmp_path / "run")
    evaluate(tmp_path / "run", utterances, split="Development", options=InferenceOptions())
    assert recorder.tasks["reading 24 audio headers"] == (24, 24)
    assert recorder.tasks["validating on Development (8 utterances)"] is not None
    done, total = recorder.tasks[f"predicting with {tmp_path / 'run'} (8 utterances)"]
    assert done == total >= 1


def test_text_encoding_and_asr_report_progress(recorder, tmp_path):
    encoder = TextEncoder(str(save_tiny_text_encoder(tmp_path / "bert")))
    TextEmbeddingCache(tmp_path / "text", encoder).get([f"i am happy {i}" for i in range(70)])
    assert recorder.tasks["encoding 70 transcripts"] == (70, 70)  # two batches of 64
    audio = [tmp_path / f"{index}.wav" for index in range(3)]
    for index, path in enumerate(audio):
        write_tone(path, duration_s=0.5 + index * 0.2)
    TranscriptCache(tmp_path / "asr", Transcriber(str(save_tiny_asr(tmp_path / "asr-model")), device="cpu")).get(audio)
    assert recorder.tasks["transcribing 3 utterances (ASR)"] == (3, 3)


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(_commands(command, f"{prefix}{name} "))
        else:
            found[f"{prefix}{name}"] = command
    return found


def test_every_command_takes_quiet():
    commands = _commands(cli)
    assert len(commands) >= 12
    assert [name for name, command in commands.items()
            if not any("--quiet" in param.opts for param in command.params)] == []


def _stderr_on_a_terminal(*args: str) -> bytes:
    """Run ``sertool ARGS`` with stderr on a pseudo-terminal (stdout on a pipe); return what stderr got."""
    main, secondary = pty.openpty()
    env = dict(os.environ, TERM="xterm", COLUMNS="120")
    process = subprocess.Popen([sys.executable, "-m", "sertool", *args], stdout=subprocess.PIPE, stderr=secondary,
                               env=env)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # the terminal closes when the process ends
            break
        if not data:
            break
        chunks.append(data)
    process.communicate()
    os.close(main)
    assert process.returncode == 0, b"".join(chunks)
    return b"".join(chunks)


def test_progress_shows_on_a_terminal_and_never_on_a_pipe_or_with_quiet(corpus, run_dir):
    args = ["evaluate", str(run_dir), "--corpus", str(corpus), "--split", "Development"]
    on_terminal = _stderr_on_a_terminal(*args)
    assert b"reading 24 audio headers" in on_terminal and b"predicting with" in on_terminal
    assert b"(8 utterances)" in on_terminal
    quiet = _stderr_on_a_terminal(*args, "--quiet")
    assert b"predicting with" not in quiet and b"reading" not in quiet
    # On a pipe, a step prints a plain line once an interval has passed (below): none within an hour.
    piped = subprocess.run([sys.executable, "-m", "sertool", *args], capture_output=True, check=True,
                           env=dict(os.environ, **{progress.LOG_EVERY_VARIABLE: "3600"}))
    assert b"predicting with" not in piped.stderr and b"\x1b[" not in piped.stderr  # no bar, no control codes
    assert b"Development of" in piped.stdout  # the table itself is there


TRAIN_LINE = re.compile(r"train: step ([\d,]+)/([\d,]+), loss \d+\.\d{3}, lr \d\.\d{2}e[-+]\d{2}, \d+\.\d utt/s, "
                        r"elapsed \d+:\d{2}:\d{2}, left (\d+:\d{2}:\d{2}|\?)")
TASK_LINE = r": ([\d,]+)/([\d,]+), \d+\.\d/s, elapsed \d+:\d{2}:\d{2}, left (\d+:\d{2}:\d{2}|\?)"


def _counts(pattern: re.Pattern[str], lines: list[str]) -> list[tuple[int, int]]:
    """(done, total) of every line that matches ``pattern`` whole."""
    return [(int(match[1].replace(",", "")), int(match[2].replace(",", "")))
            for line in lines if (match := pattern.fullmatch(line))]


def test_train_and_evaluate_in_a_log_print_plain_lines_at_the_interval(tiny_msp, tmp_path, monkeypatch):
    monkeypatch.setenv(progress.LOG_EVERY_VARIABLE, "0")  # every update prints
    runner = CliRunner()  # stderr is no terminal: what a log file gets
    trained = runner.invoke(cli, ["train", "--corpus", str(tiny_msp), "--backbone", "fbank", "--fbank-dim", "16",
                                  "--head-hidden-dim", "8", "--no-floor-blend", "--num-workers", "0", "--epochs", "2",
                                  "--batch-size", "1", "--accum-steps", "1", "--out", str(tmp_path / "run"),
                                  "--cache-dir", str(tmp_path / "cache")])
    assert trained.exit_code == 0, trained.output
    evaluated = runner.invoke(cli, ["evaluate", str(tmp_path / "run"), "--corpus", str(tiny_msp), "--split",
                                    "Development", "--cache-dir", str(tmp_path / "cache")])
    assert evaluated.exit_code == 0, evaluated.output
    for result in (trained, evaluated):
        assert "\x1b" not in result.stderr and "\r" not in result.stderr
    steps = _counts(TRAIN_LINE, trained.stderr.splitlines())
    assert [done for done, _ in steps] == list(range(1, 7))  # 3 utterances, 2 epochs, batches of 1: every step
    assert {total for _, total in steps} == {6}
    predicting = _counts(re.compile(rf"predicting with {re.escape(str(tmp_path / 'run'))} \(2 utterances\)"
                                    + TASK_LINE), evaluated.stderr.splitlines())
    assert predicting and predicting[-1] == (2, 2)
    assert [done for done, _ in predicting] == sorted(done for done, _ in predicting)
    headers = _counts(re.compile("reading audio headers" + TASK_LINE), trained.stderr.splitlines())  # set-up steps
    assert headers and headers[-1] == (7, 7)
    predicted = runner.invoke(cli, ["predict", str(tmp_path / "run"), str(tiny_msp / "Audios"), "--window-s", "1",
                                    "--hop-s", "1", "--cache-dir", str(tmp_path / "cache")])
    assert predicted.exit_code == 0, predicted.output
    files = _counts(re.compile(r"predicting 7 files \(\d+ pieces of at most 1 s\)"
                               + TASK_LINE), predicted.stderr.splitlines())
    assert files and files[-1][0] == files[-1][1] > 7  # the whole input, counted in windows and whole files
    quiet = runner.invoke(cli, ["evaluate", str(tmp_path / "run"), "--corpus", str(tiny_msp), "--split",
                                "Development", "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert quiet.exit_code == 0 and "predicting with" not in quiet.stderr


class Clock:
    """``progress.now`` for a test: time moves only when the test moves it."""

    def __init__(self) -> None:
        self.s = 0.0

    def __call__(self) -> float:
        return self.s


def test_a_log_gets_a_line_every_30_s_by_default(monkeypatch):
    monkeypatch.delenv(progress.LOG_EVERY_VARIABLE, raising=False)
    clock = Clock()
    monkeypatch.setattr(progress, "now", clock)
    lines: list[str] = []
    display = progress.PlainLines(write=lines.append)
    with display("hashing 100 audio files") as update:
        for second in range(1, 101):  # one file a second
            clock.s = float(second)
            update(second, 100)
    assert lines == [f"hashing 100 audio files: {done}/100, 1.0/s, elapsed 0:0{done // 60}:{done % 60:02d}, "
                     f"left 0:0{(100 - done) // 60}:{(100 - done) % 60:02d}" for done in (30, 60, 90)]


def test_training_in_a_log_reports_every_30_s_of_the_run(monkeypatch, capsys):
    monkeypatch.delenv(progress.LOG_EVERY_VARIABLE, raising=False)
    clock = Clock()
    monkeypatch.setattr(progress, "now", clock)
    show_progress(quiet=False)  # as the command line does; pytest's stderr is no terminal
    reporter = RichTrainReporter()
    reporter.start({"run_dir": "r", "train": 1000, "valid": 10, "device": "cpu", "world_size": 1, "amp": "off",
                    "parameters": 1, "epochs": 0, "max_steps": 400, "total_steps": 400, "batches_per_epoch": 100,
                    "accum_steps": 1, "resumed_at_step": 100, "data": LoadReport(), "classes": {"N": 1000}})
    capsys.readouterr()
    for step in range(101, 401):  # resumed at step 100; 8 utterances a step, a step every 2 s
        clock.s += 2.0
        reporter.step({"step": step, "batch": step % 100, "utterances": 8, "seconds": 2.0, "loss_total": 0.5,
                       "lr": 1e-4})
    lines = capsys.readouterr().err.splitlines()
    assert _counts(TRAIN_LINE, lines) == [(step, 400) for step in range(115, 401, 15)]  # every 15 steps = 30 s
    assert lines[0] == "train: step 115/400, loss 0.500, lr 1.00e-04, 4.0 utt/s, elapsed 0:00:30, left 0:09:30"


def test_a_bad_interval_is_one_line_naming_the_variable(tiny_msp, monkeypatch):
    monkeypatch.setenv(progress.LOG_EVERY_VARIABLE, "soon")
    result = CliRunner().invoke(cli, ["data", "info", str(tiny_msp)])
    assert result.exit_code == 2
    assert f"{progress.LOG_EVERY_VARIABLE}='soon': not a number of seconds" in result.stderr
    assert "Traceback" not in result.output


def test_a_line_holds_no_control_codes_whatever_the_task_is_called():
    lines: list[str] = []
    with progress.PlainLines(every_s=0, write=lines.append)("reading\r\x1b[2Kodd.wav") as update:
        update(1, 2)
    assert len(lines) == 1 and lines[0].startswith("reading??[2Kodd.wav: 1/2")


def test_model_downloads_show_the_hubs_progress_only_where_ours_is_drawn(recorder):
    try:
        hub._quiet_transformers()
        assert not huggingface_hub.utils.are_progress_bars_disabled()
        recorder.drawing = False  # a pipe, or --quiet
        hub._quiet_transformers()
        assert huggingface_hub.utils.are_progress_bars_disabled()
    finally:
        huggingface_hub.utils.enable_progress_bars()


def test_several_reporters_all_get_the_set_up_steps():
    class Steps(Reporter):
        def __init__(self) -> None:
            self.seen: list[tuple[str, int, int]] = []

        def progress(self, task: str, done: int, total: int) -> None:
            self.seen.append((task, done, total))

    first, second = Steps(), Steps()
    Reporters(first, second).progress("reading audio headers", 3, 7)  # the terminal's and --tensorboard's
    assert first.seen == second.seen == [("reading audio headers", 3, 7)]
