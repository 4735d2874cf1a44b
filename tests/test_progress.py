"""Progress: every long step reports it, a terminal shows it, a pipe and --quiet get none of it."""
from __future__ import annotations

import contextlib
import os
import pty
import subprocess
import sys
from pathlib import Path

import click
import huggingface_hub.utils
import pytest

from sertool.cache.text_embeddings import TextEmbeddingCache
from sertool.cli.commands import cli
from sertool.core import hub, progress
from sertool.data.corpus import open_corpus
from sertool.inference.predictor import InferenceOptions
from sertool.inference.workflows import evaluate
from sertool.models.asr import Transcriber, TranscriptCache
from sertool.models.text import TextEncoder
from sertool.training.loop import train
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
    piped = subprocess.run([sys.executable, "-m", "sertool", *args], capture_output=True, check=True)
    assert b"predicting with" not in piped.stderr and b"\x1b[" not in piped.stderr  # no bar, no control codes
    assert b"Development of" in piped.stdout  # the table itself is there


def test_model_downloads_show_the_hubs_progress_only_where_ours_is_drawn(recorder):
    try:
        hub._quiet_transformers()
        assert not huggingface_hub.utils.are_progress_bars_disabled()
        recorder.drawing = False  # a pipe, or --quiet
        hub._quiet_transformers()
        assert huggingface_hub.utils.are_progress_bars_disabled()
    finally:
        huggingface_hub.utils.enable_progress_bars()
