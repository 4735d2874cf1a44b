"""Training curves: metrics.jsonl's epoch convention, curves.png, `sertool plot`, and --tensorboard."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from sertool.cli.commands import cli
from sertool.core.errors import SertoolError
from sertool.training.curves import read_curves
from sertool.training.loop import train
from sertool.training.tensorboard import TensorBoardReporter
from tests.corpus_files import write_learnable_corpus
from tests.systems import small_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_learnable_corpus(tmp_path_factory.mktemp("corpus") / "c")


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("runs")
    # Validation at every epoch's end and, with --eval-every-steps, inside epochs too.
    configs = {"epochs": small_config(corpus, epochs=3, log_every_steps=1),
               "steps": small_config(corpus, epochs=2, log_every_steps=1, eval_every_steps=3)}
    for name, config in configs.items():
        train(config, folder / name)
    return {name: folder / name for name in configs}


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", ["epochs", "steps"])
def test_train_and_validation_records_count_epochs_alike_from_one(runs, name):
    records = _records(runs[name])
    train_epoch = {record["step"]: record["epoch"] for record in records if record["type"] == "train"}
    validations = [record for record in records if record["type"] == "valid"]
    assert min(train_epoch.values()) == 1 and max(train_epoch.values()) == (3 if name == "epochs" else 2)
    # Every step is logged (log_every_steps 1), so each validation has the train record of its step.
    assert validations and all(record["epoch"] == train_epoch[record["step"]] for record in validations)
    assert {(record["split"], record["utterances"]) for record in validations} == {("Development", 8)}


def test_every_run_folder_gets_its_curves(runs):
    for run_dir in runs.values():
        assert (run_dir / "curves.png").read_bytes()[:8] == PNG_MAGIC
    curves = read_curves(runs["steps"])
    validations = [record for record in _records(runs["steps"]) if record["type"] == "valid"]
    assert curves.valid_steps == [record["step"] for record in validations]
    assert curves.valid_ccc["average"] == [record["ccc_average"] for record in validations]
    assert (curves.valid_split, curves.valid_utterances) == ("Development", 8)


def test_curves_read_older_metrics_files_and_skip_torn_lines(tmp_path):
    # Before the convention was fixed, train records counted epochs from 0 and carried no split.
    lines = [{"type": "train", "step": 1, "epoch": 0, "loss_total": 1.5},
             {"type": "train", "step": 2, "epoch": 0, "skipped": True},
             {"type": "valid", "step": 2, "epoch": 1, "ccc_arousal": 0.1, "ccc_valence": None,
              "ccc_dominance": 0.3, "ccc_average": 0.2}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"type": "tr')
    curves = read_curves(tmp_path)
    assert (curves.train_steps, curves.train_loss, curves.valid_steps) == ([1], [1.5], [2])
    assert curves.valid_ccc["valence"] == [None] and curves.valid_split is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(SertoolError, match="metrics.jsonl: training log not found; is .* a run folder"):
        read_curves(tmp_path / "empty")


def test_plot_overlays_runs_and_refuses_to_overwrite(runs, tmp_path):
    out = tmp_path / "both.png"
    args = ["plot", str(runs["epochs"]), str(runs["steps"]), "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == PNG_MAGIC and f"wrote {out}" in result.output
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "--force" in again.output
    missing = CliRunner().invoke(cli, ["plot", str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert missing.exit_code == 2 and "metrics.jsonl: training log not found" in missing.output


def test_tensorboard_without_the_package_names_what_to_install(corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    result = CliRunner().invoke(cli, ["train", "--corpus", str(corpus), "--backbone", "fbank", "--epochs", "1",
                                      "--out", str(tmp_path / "run"), "--tensorboard"])
    assert result.exit_code == 2
    assert "--tensorboard needs tensorboard, which is not installed: pip install 'tensorboard" in result.output
    assert not (tmp_path / "run").exists()  # refused before any work


def test_tensorboard_reporter_writes_what_metrics_jsonl_records(corpus, tmp_path, monkeypatch):
    scalars: list[tuple[str, float, int]] = []

    class FakeWriter:  # records what the real SummaryWriter would write
        def __init__(self, log_dir: str) -> None:
            self.log_dir = log_dir

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            scalars.append((tag, value, step))

        def close(self) -> None:
            scalars.append(("closed", 0.0, 0))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    train(small_config(corpus, log_every_steps=1), tmp_path / "run", reporter=TensorBoardReporter(tmp_path / "run"))
    records = _records(tmp_path / "run")
    valid = [(record["step"], record["ccc_average"]) for record in records if record["type"] == "valid"]
    assert [(step, value) for tag, value, step in scalars if tag == "Development/ccc_average"] == valid
    losses = [(record["step"], record["loss_total"]) for record in records if record["type"] == "train"]
    assert [(step, value) for tag, value, step in scalars if tag == "train/loss_total"] == losses
    assert scalars[-1][0] == "closed"
