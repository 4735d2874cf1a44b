"""Other packages' warnings that say nothing a user can act on never reach the user; any other still does."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import warnings

import pytest

from sertool.guards.surface import DEBUG_VARIABLE
from sertool.guards.third_party import without_log_message, without_warning
from sertool.models.asr import GENERATE_ARGUMENTS_WARNING
from sertool.models.backbones.wav2vec2 import MASK_TYPES_WARNING
from tests.tiny_asr import save_tiny_asr
from tests.tiny_speech import save_tiny_wavlm
from tests.tiny_text import save_tiny_text_encoder


def test_a_wavlm_run_with_text_and_asr_prints_no_warning_of_another_package(tiny_msp, tmp_path):
    """WavLM's attention (in the forward pass and again in the backward of gradient checkpointing), Whisper's
    generate (ASR for the missing transcripts) and the text encoder, with every warning shown (-W default)."""
    shutil.rmtree(tiny_msp / "Transcripts")  # every transcript comes from ASR
    models = {name: str(save(tmp_path / name)) for name, save in
              (("wavlm", save_tiny_wavlm), ("text", save_tiny_text_encoder), ("asr", save_tiny_asr))}
    completed = subprocess.run(
        [sys.executable, "-W", "default", "-m", "sertool", "train", "--corpus", str(tiny_msp), "--backbone", "wavlm",
         "--backbone-path", models["wavlm"], "--gradient-checkpointing", "--text", "--text-model", models["text"],
         "--asr", models["asr"], "--head-hidden-dim", "8", "--num-workers", "0", "--epochs", "1", "--batch-size", "2",
         "--accum-steps", "1", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env={key: value for key, value in os.environ.items() if key != DEBUG_VARIABLE})
    assert completed.returncode == 0, completed.stderr
    assert "transcribed with" in completed.stderr  # ASR did run
    assert "Warning" not in completed.stderr and "deprecated" not in completed.stderr, completed.stderr


def _shown(category: type[Warning], message: str) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with without_warning(MASK_TYPES_WARNING, UserWarning):
            warnings.warn(message, category, stacklevel=1)
    return [str(warning.message) for warning in caught]


def test_only_the_named_warning_is_silenced_and_debug_shows_it(monkeypatch):
    monkeypatch.delenv(DEBUG_VARIABLE, raising=False)
    known = f"{MASK_TYPES_WARNING}. Use same type for both instead."
    assert _shown(UserWarning, known) == []
    assert _shown(UserWarning, "another warning") == ["another warning"]
    assert _shown(DeprecationWarning, known) == [known]  # the message under another category
    monkeypatch.setenv(DEBUG_VARIABLE, "1")
    assert _shown(UserWarning, known) == [known]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("debug", [False, True])
def test_only_the_named_log_message_is_dropped_and_only_while_it_may_arise(monkeypatch, debug):
    if debug:
        monkeypatch.setenv(DEBUG_VARIABLE, "1")
    else:
        monkeypatch.delenv(DEBUG_VARIABLE, raising=False)
    logger = logging.getLogger("transformers.generation.utils")
    records = _Records()
    logger.addHandler(records)
    try:
        known = f"{GENERATE_ARGUMENTS_WARNING}=({{'suppress_tokens'}}) is deprecated"
        with without_log_message(logger.name, GENERATE_ARGUMENTS_WARNING):
            logger.warning(known)
            logger.warning("another message")
        logger.warning(known)  # after the call that raises it: shown
    finally:
        logger.removeHandler(records)
    assert records.messages == [*([known] if debug else []), "another message", known]
    assert not logger.filters


def test_any_other_warning_during_a_command_is_held_back_and_counted(monkeypatch, tmp_path):
    """A warning no filter names (here: raised by a command's callback, as any package might) is not printed with
    its file and line; one note counts it, and --debug prints it as Python does."""
    from click.testing import CliRunner

    from sertool.cli.commands import cli

    command = cli.commands["data"].commands["info"]  # type: ignore[attr-defined]

    def warning_command(**values):
        warnings.warn("a package's advice nobody asked for", UserWarning, stacklevel=1)
        warnings.warn("and a second one", DeprecationWarning, stacklevel=1)

    monkeypatch.setattr(command, "callback", warning_command)
    for debug in (False, True):
        monkeypatch.setenv(DEBUG_VARIABLE, "1" if debug else "0")
        with warnings.catch_warnings(record=True) as shown:  # what Python would print
            warnings.simplefilter("always")  # as under python -W default: nothing filtered before sertool's hold
            result = CliRunner().invoke(cli, ["data", "info", str(tmp_path)])
        assert result.exit_code == 0, result.output
        if debug:
            assert [str(warning.message) for warning in shown] == ["a package's advice nobody asked for",
                                                                   "and a second one"]
            assert "note:" not in result.stderr
        else:
            assert shown == [] and "advice" not in result.stderr and "Warning" not in result.stderr
            assert result.stderr.strip() == "note: 2 warnings of other packages held back; --debug shows them"
