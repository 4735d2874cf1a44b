"""`sertool train --mlflow`: the run as an MLflow run, read back with MLflow's own client from the run folder's store.

The tests that need MLflow skip where the extra `mlflow` (mlflow-skinny, sqlalchemy, alembic) is not installed; the
missing-package messages are tested either way.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from sertool.cli.commands import cli
from sertool.core.config import Config
from sertool.guards.surface import DEBUG_VARIABLE
from sertool.training.loop import train
from sertool.training.reporter import Reporters
from sertool.training.run_folder import run_outputs
from tests.corpus_files import write_learnable_corpus
from tests.systems import InterruptAt, small_config

STEP_METRICS = ("loss_total", "loss_emotion", "loss_gender", "lr", "grad_norm")
SCORES = ("arousal", "valence", "dominance", "average")


@pytest.fixture(autouse=True)
def _no_mlflow_settings(monkeypatch):
    """MLflow's own settings of whoever runs the tests stay out: the run folder's store and the default experiment."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_learnable_corpus(tmp_path_factory.mktemp("corpus") / "c")


def _needs_mlflow() -> None:
    for package in ("mlflow", "sqlalchemy", "alembic"):
        pytest.importorskip(package, reason="the extra `mlflow` is not installed")


def _client(run_dir: Path, store: Path | None = None):
    """MLflow's client of the run folder's own store, or of ``store``."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{(store or run_dir / 'mlflow.db').resolve()}")


def _records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["type"] == kind]


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((metric.step, metric.value) for metric in client.get_metric_history(run_id, key))


def _files(run_dir: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(run_dir.iterdir())
            if path.is_file() and path.name != ".lock"}


def _reporter(run_dir: Path, warnings: list[str]):
    from sertool.training.mlflow_tracking import MlflowReporter

    return MlflowReporter(run_dir, warn=warnings.append)


@pytest.fixture(scope="module")
def tracked(corpus, tmp_path_factory) -> Path:
    """A run of 12 steps (3 epochs of 4), metrics.jsonl recording every 3rd step and each epoch's end: started without
    MLflow and stopped at step 5 (last.pt: step 4); resumed with MLflow and stopped at step 9, after MLflow logged it
    (last.pt: step 8); resumed with `sertool train --resume RUN --mlflow` to the end."""
    _needs_mlflow()
    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    with pytest.raises(KeyboardInterrupt):
        train(small_config(corpus, epochs=3, log_every_steps=3), run_dir, reporter=InterruptAt(5))
    warnings: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        train(Config(), run_dir, resume=True, reporter=Reporters(_reporter(run_dir, warnings), InterruptAt(9)))
    recorded = json.loads((run_dir / "mlflow_run.json").read_text())
    assert _client(run_dir).get_run(recorded["run_id"]).info.status == "KILLED"  # stopped: not finished
    result = CliRunner().invoke(cli, ["train", "--resume", str(run_dir), "--mlflow"])
    assert result.exit_code == 0, result.output
    assert warnings == []
    return run_dir


def test_one_mlflow_run_holds_the_config_and_every_record_of_metrics_jsonl_once(tracked):
    client = _client(tracked)
    experiment = client.get_experiment_by_name("sertool")
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_id for run in runs] == [json.loads((tracked / "mlflow_run.json").read_text())["run_id"]]
    run = runs[0]
    assert (run.info.status, run.info.run_name) == ("FINISHED", "run")
    config = yaml.safe_load((tracked / "config.yaml").read_text())
    assert set(run.data.params) == ({f"{section}.{key}" for section, values in config.items()
                                     if isinstance(values, dict) for key in values}
                                    | {name for name, value in config.items() if not isinstance(value, dict)})
    assert run.data.params["seed"] == "0" and run.data.params["recipe"] == "null"
    assert run.data.params["model.backbone"] == "fbank" and run.data.params["train.log_every_steps"] == "3"
    assert run.data.params["model.aux"] == '["gender"]' and run.data.params["data.corpus"] == config["data"]["corpus"]

    train_records = _records(tracked, "train")
    assert [record["step"] for record in train_records] == [3, 4, 6, 8, 9, 12]  # the logged steps, not every step
    for name in STEP_METRICS:
        assert _history(client, run.info.run_id, f"train/{name}") == [
            (record["step"], record[name]) for record in train_records], name
    valid_records = _records(tracked, "valid")
    assert [record["step"] for record in valid_records] == [4, 8, 12]
    for score in SCORES:
        assert _history(client, run.info.run_id, f"Development/ccc_{score}") == [
            (record["step"], record[f"ccc_{score}"]) for record in valid_records], score


def test_the_mlflow_run_ends_with_the_summary_and_names_best_pt(tracked):
    summary = json.loads((tracked / "summary.json").read_text())
    run = _client(tracked).get_run(json.loads((tracked / "mlflow_run.json").read_text())["run_id"])
    assert {key[len("best/ccc_"):]: value for key, value in run.data.metrics.items() if key.startswith("best/")} \
        == summary["best"]
    assert run.data.tags["sertool.best_step"] == str(summary["best_step"])
    assert run.data.tags["sertool.stopped"] == summary["stopped"] == "finished"
    assert run.data.tags["sertool.best_checkpoint"] == str((tracked / "best.pt").resolve())


def test_a_store_failing_mid_run_is_a_warning_and_a_resume_logs_what_it_missed(tracked, corpus, tmp_path,
                                                                              monkeypatch):
    from mlflow.tracking import MlflowClient

    # Another store, named by MLflow's own settings: a copy of the tracked run's (its tables made already).
    store = shutil.copy(tracked / "mlflow.db", tmp_path / "store.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "elsewhere")
    log_batch = MlflowClient.log_batch

    def failing_from_step_2(self, run_id, metrics=(), **arguments):
        if any(metric.step >= 2 for metric in metrics):
            raise OSError("disk full")
        return log_batch(self, run_id, metrics=metrics, **arguments)

    run_dir, warnings = tmp_path / "run", []
    with monkeypatch.context() as patched:
        patched.setattr(MlflowClient, "log_batch", failing_from_step_2)
        result = train(small_config(corpus, epochs=1, log_every_steps=1), run_dir,
                       reporter=_reporter(run_dir, warnings))
    assert result.steps == 4 and (run_dir / "best.pt").is_file()  # the run went on
    assert warnings == [f"warning: --mlflow: logging to the MLflow store MLFLOW_TRACKING_URI=sqlite:///{store} failed "
                        f"(disk full); the run goes on without MLflow, and `sertool train --resume {run_dir} --mlflow` "
                        "logs what it missed"]
    recorded = json.loads((run_dir / "mlflow_run.json").read_text())
    assert recorded["tracking_uri"] == f"sqlite:///{store}" and not (run_dir / "mlflow.db").exists()
    client, run_id = _client(run_dir, store), recorded["run_id"]
    assert client.get_run(run_id).info.experiment_id == client.get_experiment_by_name("elsewhere").experiment_id
    assert [step for step, _ in _history(client, run_id, "train/loss_total")] == [1]
    assert client.get_run(run_id).info.status == "RUNNING"  # nothing more was sent to a store that failed

    train(Config(), run_dir, resume=True, reporter=_reporter(run_dir, warnings))  # the run had ended: it only logs
    expected = [(record["step"], record["loss_total"]) for record in _records(run_dir, "train")]
    assert _history(client, run_id, "train/loss_total") == expected and len(expected) == 4
    assert client.get_run(run_id).info.status == "FINISHED" and len(warnings) == 1


def test_mlflow_and_its_store_print_nothing_of_their_own(tracked, tmp_path):
    """Every warning shown (-W default): SQLAlchemy's about MLflow's store as it is imported, MLflow's lines as it
    opens the store, stay off the terminal. A resume of the ended run: only the MLflow run is opened and ended."""
    run_dir = shutil.copytree(tracked, tmp_path / "run")
    completed = subprocess.run([sys.executable, "-W", "default", "-m", "sertool", "train", "--resume", str(run_dir),
                                "--mlflow"], capture_output=True, text=True,
                               env={key: value for key, value in os.environ.items() if key != DEBUG_VARIABLE})
    assert completed.returncode == 0, completed.stderr
    assert "the run had already ended" in completed.stderr
    assert "Warning" not in completed.stderr and "INFO" not in completed.stderr, completed.stderr


def test_without_mlflow_installed_train_mlflow_names_what_to_install(corpus, tmp_path, monkeypatch):
    for module in ("mlflow", "mlflow.tracking"):  # as if mlflow were not installed (even if a test imported it)
        monkeypatch.setitem(sys.modules, module, None)
    result = CliRunner().invoke(cli, ["train", "--corpus", str(corpus), "--backbone", "fbank", "--epochs", "1",
                                      "--out", str(tmp_path / "run"), "--mlflow"])
    assert result.exit_code == 2
    assert ("--mlflow needs mlflow-skinny, which is not installed (sertool's extra `mlflow`: mlflow-skinny, "
            "sqlalchemy, alembic): pip install 'mlflow-skinny") in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before any work


def test_the_run_folders_store_needs_sqlalchemy(corpus, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    result = CliRunner().invoke(cli, ["train", "--corpus", str(corpus), "--backbone", "fbank", "--epochs", "1",
                                      "--out", str(tmp_path / "run"), "--mlflow"])
    assert result.exit_code == 2
    assert "--mlflow's store in the run folder (mlflow.db) needs sqlalchemy, which is not installed" in result.output
    assert not (tmp_path / "run").exists()


def test_a_server_that_does_not_answer_is_one_line_before_any_work(corpus, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the loopback's discard port: refused
    result = CliRunner().invoke(cli, ["train", "--corpus", str(corpus), "--backbone", "fbank", "--epochs", "1",
                                      "--out", str(tmp_path / "run"), "--mlflow"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --mlflow: cannot reach the MLflow store "
                                    "MLFLOW_TRACKING_URI=http://127.0.0.1:9: ")
    assert result.output.rstrip().endswith("fix MLFLOW_TRACKING_URI or train without --mlflow")
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_a_bad_store_on_resume_is_one_line_and_the_run_folder_stays_as_it_was(tracked, tmp_path, monkeypatch):
    run_dir = shutil.copytree(tracked, tmp_path / "run")
    before, argv = _files(run_dir), (run_dir / "argv.txt").read_text()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "htp://nowhere")  # no such scheme
    result = CliRunner().invoke(cli, ["train", "--resume", str(run_dir), "--mlflow"])
    assert result.exit_code == 2
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in result.output
    assert error[0].startswith("error: --mlflow: cannot log to the MLflow store MLFLOW_TRACKING_URI=htp://nowhere: ")
    assert error[0].endswith(f"nothing is lost: fix it and continue with `sertool train --resume {run_dir} --mlflow`, "
                             "or without --mlflow")
    after = _files(run_dir)
    assert after.pop("argv.txt") != before.pop("argv.txt") and after == before  # the attempt is recorded, only that
    assert (run_dir / "argv.txt").read_text().startswith(argv)


def test_a_recorded_mlflow_run_missing_from_the_store_is_never_replaced_silently(tracked, tmp_path):
    run_dir = shutil.copytree(tracked, tmp_path / "run")
    run_id = "0" * 32  # as if the store had been replaced by another
    (run_dir / "mlflow_run.json").write_text(json.dumps({"run_id": run_id, "tracking_uri": None}))
    result = CliRunner().invoke(cli, ["train", "--resume", str(run_dir), "--mlflow"])
    assert result.exit_code == 2
    assert (f"mlflow_run.json: the MLflow run {run_id} is not in the MLflow store {run_dir / 'mlflow.db'} (it was "
            "logged to the run folder's own mlflow.db); point MLFLOW_TRACKING_URI at that store to continue it, or "
            "remove mlflow_run.json to log this run as a new MLflow run") in result.output


def test_force_replaces_the_run_folders_mlflow_store_with_the_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("mlflow.db", "mlflow.db-journal", "mlflow_run.json", "notes.txt"):
        (run_dir / name).write_text("x")
    assert {path.name for path in run_outputs(run_dir)} == {"mlflow.db", "mlflow.db-journal", "mlflow_run.json"}


def test_params_respect_mlflows_limits_and_metric_names_its_characters():
    _needs_mlflow()
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

    from sertool.training.mlflow_tracking import _metric_key

    batches: list[list] = []

    class Client:  # what MlflowClient.log_batch is given
        def log_batch(self, run_id, params):
            batches.append(params)

    reporter = _reporter(Path("run"), [])
    config = {"data": {f"key_{index}": index for index in range(150)}, "model": {"path": "x" * 7000, "aux": None}}
    reporter._log_params(Client(), config, have={"data.key_0": "0"})
    assert [len(batch) for batch in batches] == [MAX_PARAMS_TAGS_PER_BATCH, 151 - MAX_PARAMS_TAGS_PER_BATCH]
    params = {param.key: param.value for batch in batches for param in batch}
    assert "data.key_0" not in params and params["data.key_149"] == "149" and params["model.aux"] == "null"
    assert params["model.path"] == "x" * MAX_PARAM_VAL_LENGTH
    assert _metric_key("Dev (set 2)/ccc_average") == "Dev _set 2_/ccc_average"
