"""Fault injection on the training side: NaN / infinite / absurd numbers in configs, flags and data.

Each case ends as one line naming the file, row or flag, or as correct behaviour: never a traceback, never
exit 0 with garbage, never a lost or mixed file. docs/reliability.md lists them (### Training).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sertool.cli import cli
from sertool.config import Config
from sertool.training.loop import train
from tests.corpus_files import write_learnable_corpus

# 8 training utterances in batches of 2: 4 optimiser steps per epoch, 2 epochs.
TINY = ["--epochs", "2", "--sampling", "whole", "--batch-size", "2", "--accum-steps", "1", "--backbone", "fbank",
        "--fbank-dim", "8", "--head-hidden-dim", "8", "--head-dropout", "0.3", "--checkpoint-every-steps", "1",
        "--device", "cpu"]


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


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_learnable_corpus(tmp_path_factory.mktemp("faults") / "c", per_split={"Train": 8, "Development": 4})


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory) -> Path:
    """A finished run."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    result = run("train", "--corpus", corpus, "--out", run_dir, "--num-workers", "0", *TINY)
    assert result.exit_code == 0, result.output
    return run_dir


# ---- numbers --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("flag", "value"), [
    ("--lr-heads", "nan"), ("--lr-backbone", "-inf"), ("--head-dropout", "1.5"), ("--head-dropout", "1"),
    ("--fbank-dim", "0"), ("--num-workers", "-1"), ("--epochs", "0"), ("--epochs", "100000"), ("--seed", "-1"),
    ("--max-duration-s", "0.01"), ("--warmup-fraction", "1"), ("--log-every-steps", "0"), ("--max-batch-s", "inf"),
    ("--aux-weight", "1e400"), ("--accum-steps", "2.5"),
])
def test_training_non_finite_or_absurd_flags_are_refused_before_any_work(corpus, tmp_path, flag, value):
    usage_error(run("train", "--corpus", corpus, "--out", tmp_path / "run", flag, value), flag)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("train:\n  lr_heads: .nan\n", "train.lr_heads must be a finite number, got nan"),
    ("train:\n  lr_heads: .inf\n", "train.lr_heads must be a finite number, got inf"),
    ("train:\n  weight_decay: 1.0e+400\n", "train.weight_decay must be a finite number, got inf"),
    ("model:\n  head_dropout: 1.5\n", "model.head_dropout must be in [0, 1), got 1.5"),
    ("train:\n  accum_steps: 0\n", "train.accum_steps must be ≥ 1, got 0"),
    ("seed: 99999999999999999999999\n", "seed must be in [0, 9223372036854775807]"),
])
def test_training_non_finite_or_absurd_yaml_values_name_file_and_key(tmp_path, yaml_text, message):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml_text)
    line = one_line_error(run("train", "--config", config_file, "--out", tmp_path / "run"))
    assert f"--config {config_file}: {message}" in line
    assert not (tmp_path / "run").exists()


def test_training_a_config_built_in_code_is_checked_too(corpus, tmp_path):
    config = Config()
    config.data.corpus = str(corpus)
    config.train.lr_heads = float("nan")
    from sertool.errors import SertoolError

    with pytest.raises(SertoolError, match="train.lr_heads must be a finite number"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "utf-16-be"])
def test_training_yaml_config_with_a_byte_order_mark_is_read(tmp_path, encoding):
    config_file = tmp_path / "c.yaml"
    text = "model:\n  backbone: fbank\ntrain:\n  epochs: 3  # ü\n"
    config_file.write_bytes(("\ufeff" + text if encoding == "utf-16-be" else text).encode(encoding))
    config = Config.from_yaml(config_file)
    assert config.model.backbone == "fbank" and config.train.epochs == 3


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
def test_training_labels_nan_inf_and_huge_are_dropped_not_trained_on(corpus, tmp_path):
    data = tmp_path / "c"
    shutil.copytree(corpus, data)
    labels = data / "Labels" / "labels_consensus.csv"
    lines = labels.read_text().splitlines()
    for row, value in zip((1, 2, 3), ("nan", "inf", "1e308")):
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
