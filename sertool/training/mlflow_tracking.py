"""``sertool train --mlflow``: the run as an MLflow run, through the loop's ``Reporter`` hook.

MLflow is optional (setup.cfg's extra ``mlflow``: mlflow-skinny, and sqlalchemy and alembic for the store in the
run folder); without it, asking for it is an error before any work. Where the run goes is MLflow's own setting:
``MLFLOW_TRACKING_URI`` (a server, a database), by default a SQLite store in the run folder,
``RUN_DIR/mlflow.db``; the experiment is ``MLFLOW_EXPERIMENT_NAME``, by default "sertool"; the MLflow run is named
after the run folder. (Not MLflow's file store, ``mlruns/``: MLflow 3 keeps it in maintenance mode and refuses it
unless ``MLFLOW_ALLOW_FILE_STORE`` is set; SQLite is its own default. A ``file:`` URI works where MLflow allows it.)

The MLflow run mirrors metrics.jsonl: the resolved config as parameters (``train.lr_heads``, ...), the losses,
``lr`` and ``grad_norm`` of each step metrics.jsonl records (``train/loss_total``, ...), each validation's CCCs
(``Development/ccc_arousal``, ...), the same curves as ``--tensorboard`` (``reporter.step_scalars``); at the end,
best.pt's CCCs (``best/ccc_*``, at its step) and tags: ``sertool.best_step``, ``sertool.stopped`` and
``sertool.best_checkpoint`` (best.pt's path; checkpoints are not uploaded). ``RUN_DIR/mlflow_run.json`` names the
MLflow run, and ``train --resume`` continues it: each step is logged once (the steps a killed run logged after its
last checkpoint are not logged again), and what the MLflow run lacks (the run started without --mlflow, or logging
failed for a while) is logged from metrics.jsonl when the run starts again.

A store that cannot be used when the run starts is one error line, before the first step (a server, already when
the command starts); one that fails later costs a warning, and the run goes on without MLflow.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sertool.core.constants import BEST_NAME, METRICS_NAME
from sertool.core.errors import SertoolError, missing_package
from sertool.guards.outputs import atomic_write
from sertool.guards.reads import MAX_CONFIG_BYTES, read_user_text
from sertool.training.curves import read_records
from sertool.training.reporter import Reporter, step_scalars, validation_scalars

MLFLOW_STORE_NAME = "mlflow.db"  # the run folder's own tracking store (SQLite), where MLFLOW_TRACKING_URI is unset
MLFLOW_ARTIFACTS_NAME = "mlflow-artifacts"  # the artifact location of the run folder's own store (sertool logs none)
MLFLOW_RUN_NAME = "mlflow_run.json"  # the MLflow run this run folder logs to, which `train --resume` continues
DEFAULT_EXPERIMENT = "sertool"
MLFLOW_EXTRA = ("mlflow", "mlflow-skinny", "sqlalchemy", "alembic")  # setup.cfg's extra, as missing_package names it
_SERVER_SCHEMES = ("http", "https")
# While the run is opened, a server that does not answer fails in seconds, not after MLflow's own retries (7, with
# backoff: minutes). Settings the user made stand; once the run is open, MLflow's are used.
_OPENING_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
# What MLflow logs (INFO) while it creates a SQLite store, and what SQLAlchemy warns about MLflow's store module as it
# is imported (nothing a user can act on).
_STORE_CREATION_LOGS = ("Creating initial MLflow database tables", "Updating database tables")
NOLOAD_WARNING = "The ``noload`` loader strategy is deprecated"


class MlflowReporter(Reporter):
    """The run as an MLflow run (see the module docstring). Only rank 0's reporter is called under DDP."""

    def __init__(self, run_dir: str | Path, *, warn: Callable[[str], None]) -> None:
        """Check that MLflow is installed and, for a server, that it answers; the MLflow run opens when training
        starts.

        Args:
            run_dir: the run folder.
            warn: says that logging failed during the run (the terminal's line); the run goes on without MLflow.

        Raises:
            SertoolError: a package is missing (naming the install command), or the server does not answer.
        """
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise missing_package("mlflow-skinny", needed_for="--mlflow", extra=MLFLOW_EXTRA) from None
        self.run_dir = Path(run_dir)
        self.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or None  # None: the run folder's own store
        if self.tracking_uri is None:
            for package in ("sqlalchemy", "alembic"):
                try:
                    importlib.import_module(package)
                except ImportError:
                    raise missing_package(package, needed_for=f"--mlflow's store in the run folder "
                                          f"({MLFLOW_STORE_NAME})", extra=MLFLOW_EXTRA) from None
        self.experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        self.run_id: str | None = None
        self._client_class = MlflowClient
        self._client: Any = None  # an MlflowClient while the MLflow run is open and logging works
        self._warn = warn
        self._last_step: dict[str, int] = {}  # per metric, the last step the MLflow run holds
        self._finished = False
        if urlparse(self.tracking_uri or "").scheme in _SERVER_SCHEMES:
            # Read-only, so that under torchrun every rank may ask; before the run folder is made.
            with _opening(), self._failures("cannot reach", advice="fix MLFLOW_TRACKING_URI or train without "
                                                                   "--mlflow"):
                MlflowClient(tracking_uri=self.tracking_uri).search_experiments(max_results=1)

    # ----------------------------------------------------------------------------------------------
    def start(self, summary: dict[str, Any]) -> None:
        advice = (f"nothing is lost: fix it and continue with `sertool train --resume {self.run_dir} --mlflow`, or "
                  "without --mlflow")
        with _opening(), self._failures("cannot log to", advice=advice):
            client = self._client_class(tracking_uri=self._uri())
            recorded = self._recorded_run()
            if recorded is None:
                run = client.create_run(self._experiment_id(client), run_name=self.run_dir.name,
                                        tags={"sertool.run_dir": str(self.run_dir.resolve())})
                self.run_id = run.info.run_id
                with atomic_write(self.run_dir / MLFLOW_RUN_NAME, replace=True) as handle:
                    json.dump({"run_id": self.run_id, "experiment_id": run.info.experiment_id,
                               "tracking_uri": self.tracking_uri}, handle, indent=2)
            else:
                run = self._continued_run(client, recorded)
                client.update_run(run.info.run_id, status="RUNNING")
            self._log_params(client, summary["config"].to_dict(), have=run.data.params)
            self._client = client
            # What the MLflow run lacks of metrics.jsonl (trimmed to last.pt's step on resume).
            records = read_records(self.run_dir / METRICS_NAME) if (self.run_dir / METRICS_NAME).is_file() else []
            self._log([(step_scalars(record) if record.get("type") == "train" else
                        validation_scalars(record) if record.get("type") == "valid" else {}, record["step"])
                       for record in records])

    def step(self, stats: dict[str, Any]) -> None:
        if stats.get("logged"):
            self._log([(step_scalars(stats), stats["step"])])

    def validation(self, metrics: dict[str, Any]) -> None:
        self._log([(validation_scalars(metrics), metrics["step"])])

    def finish(self, result: Any) -> None:
        self._log([({f"best/ccc_{name}": value for name, value in result.best.items()}, result.best_step)])
        tags = {"sertool.best_step": str(result.best_step), "sertool.stopped": str(result.stopped),
                "sertool.best_checkpoint": str((self.run_dir / BEST_NAME).resolve())}
        self._call("log_batch", tags=_tags(tags))
        self._call("set_terminated", status="FINISHED")
        self._finished = True

    def close(self) -> None:
        """An MLflow run that did not finish (a stop, an error) is marked KILLED; `train --resume` reopens it."""
        if not self._finished:
            self._call("set_terminated", status="KILLED")
        self._client = None

    # ----------------------------------------------------------------------------------------------
    def _uri(self) -> str:
        """The tracking URI: MLFLOW_TRACKING_URI, or the SQLite store in the run folder."""
        if self.tracking_uri is not None:
            return self.tracking_uri
        from sqlalchemy.engine import URL  # which characters of the path it escapes depends on its version

        return URL.create("sqlite", database=str((self.run_dir / MLFLOW_STORE_NAME).resolve())).render_as_string()

    def _where(self) -> str:
        """The store, as the messages name it."""
        return (f"the MLflow store MLFLOW_TRACKING_URI={self.tracking_uri}" if self.tracking_uri is not None
                else f"the MLflow store {self.run_dir / MLFLOW_STORE_NAME}")

    @contextlib.contextmanager
    def _failures(self, doing: str, *, advice: str) -> Iterator[None]:
        """Any failure of MLflow or its store (an exception of theirs, whatever its kind) as one line."""
        try:
            yield
        except SertoolError:
            raise
        except Exception as error:  # MLflow, requests, SQLAlchemy: each raises its own kind
            raise SertoolError(f"--mlflow: {doing} {self._where()}: {_first_line(error)}; {advice}") from None

    def _recorded_run(self) -> dict[str, Any] | None:
        """mlflow_run.json's record of the MLflow run this run folder logs to, or None for a run that has none."""
        path = self.run_dir / MLFLOW_RUN_NAME
        if not path.is_file():
            return None
        try:
            recorded = json.loads(read_user_text(path, what="MLflow run record", max_bytes=MAX_CONFIG_BYTES))
        except ValueError:
            recorded = None
        if not isinstance(recorded, dict) or not isinstance(recorded.get("run_id"), str):
            raise SertoolError(f"{path}: not the record of an MLflow run (a JSON object with its run_id); remove it "
                               "to log this run as a new MLflow run")
        return recorded

    def _continued_run(self, client: Any, recorded: dict[str, Any]) -> Any:
        """The MLflow run of ``recorded``, with the last step of each of its metrics (``_last_step``)."""
        from mlflow.exceptions import MlflowException

        self.run_id = recorded["run_id"]
        try:
            run = client.get_run(self.run_id)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            where = (f"MLFLOW_TRACKING_URI={recorded['tracking_uri']}" if recorded.get("tracking_uri")
                     else f"the run folder's own {MLFLOW_STORE_NAME}")
            raise SertoolError(f"{self.run_dir / MLFLOW_RUN_NAME}: the MLflow run {self.run_id} is not in "
                               f"{self._where()} (it was logged to {where}); point MLFLOW_TRACKING_URI at that store "
                               f"to continue it, or remove {MLFLOW_RUN_NAME} to log this run as a new MLflow run") \
                from None
        for key in run.data.metrics:
            self._last_step[key] = max(metric.step for metric in client.get_metric_history(self.run_id, key))
        return run

    def _experiment_id(self, client: Any) -> str:
        """The experiment's id, created where it does not exist yet."""
        from mlflow.exceptions import MlflowException

        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return experiment.experiment_id
        # In the run folder's own store, artifacts would go to the working directory's mlruns/ (MLflow's default);
        # sertool logs none, but one logged to this run later belongs in the run folder too.
        location = (None if self.tracking_uri is not None
                    else (self.run_dir / MLFLOW_ARTIFACTS_NAME).resolve().as_uri())
        try:
            return client.create_experiment(self.experiment, artifact_location=location)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return client.get_experiment_by_name(self.experiment).experiment_id  # another run made it meanwhile

    def _log_params(self, client: Any, config: dict[str, Any], *, have: dict[str, str]) -> None:
        """The config's values as parameters, but those the MLflow run has (MLflow refuses to change a parameter: a
        resumed run's moved corpus keeps the first value)."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        params = [Param(key, value[:MAX_PARAM_VAL_LENGTH]) for key, value in _flat(config).items() if key not in have]
        for chunk in _chunks(params, MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(self.run_id, params=chunk)

    def _log(self, entries: Sequence[tuple[dict[str, float], int]]) -> None:
        """Each ``(scalars, step)`` of ``entries``, in order, but the metrics the MLflow run already holds at that step
        or a later one; in as few requests as MLflow's batch size allows."""
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        timestamp_ms = int(time.time() * 1000)
        metrics = []
        for scalars, step in entries:
            for tag, value in scalars.items():
                key = _metric_key(tag)
                if step > self._last_step.get(key, -1):
                    metrics.append(Metric(key, value, timestamp_ms, step))
                    self._last_step[key] = step
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            if not self._call("log_batch", metrics=chunk):
                return

    def _call(self, method: str, **arguments: Any) -> bool:
        """The client's ``method`` for the MLflow run, while it is open; whether it succeeded. A failure is a warning,
        and the run goes on without MLflow (metrics.jsonl holds every record; a resumed run logs what the MLflow run
        lacks)."""
        if self._client is None:
            return False
        try:
            getattr(self._client, method)(self.run_id, **arguments)
            return True
        except Exception as error:  # MLflow, requests, SQLAlchemy: each raises its own kind
            self._client = None
            self._warn(f"warning: --mlflow: logging to {self._where()} failed ({_first_line(error)}); the run goes on "
                       f"without MLflow, and `sertool train --resume {self.run_dir} --mlflow` logs what it missed")
            return False


@contextlib.contextmanager
def _opening() -> Iterator[None]:
    """While the MLflow run opens: ``_OPENING_SETTINGS`` where the user set none, and without MLflow's lines about
    creating a SQLite store's tables or SQLAlchemy's warning about its store (the terminal's lines are sertool's)."""
    from sertool.guards.third_party import without_log_message, without_warning

    added = {name: value for name, value in _OPENING_SETTINGS.items() if name not in os.environ}
    os.environ.update(added)
    try:
        with contextlib.ExitStack() as stack:
            for message in _STORE_CREATION_LOGS:
                stack.enter_context(without_log_message("mlflow.store.db.utils", message))
            stack.enter_context(without_warning(NOLOAD_WARNING, DeprecationWarning))
            yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The config's values by dotted key (``train.lr_heads``), as text: strings as they are, the rest as JSON."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat


def _metric_key(tag: str) -> str:
    """``tag`` as an MLflow metric name, which allows letters, digits, ``_ - . : /`` and spaces (a validation split's
    name is the corpus's)."""
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH

    return re.sub(r"[^/\w.\- :]", "_", tag)[:MAX_ENTITY_KEY_LENGTH]


def _tags(tags: dict[str, str]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(key, value) for key, value in tags.items()]


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _first_line(error: BaseException) -> str:
    """An exception's message, its first line (SQLAlchemy's carry the SQL below), or its kind where it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
