"""Lightning's MLFlowLogger with segpipe's defaults, resumable runs and tolerance of a lost server."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from argparse import Namespace
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from segpipe.tracking.store import local_artifact_location

if TYPE_CHECKING:  # mlflow and matplotlib are imported when a run logs, not when the CLI starts
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from mlflow.utils.async_logging.run_operations import RunOperations

# MLflow 3 refuses a bare ./mlruns file store; a SQLite file is the embedded default.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def effective_tracking_uri(tracking_uri: str) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else ``tracking_uri``; a relative SQLite path made absolute.

    MLflow caches one store per URI string for the whole process, so ``sqlite:///mlflow.db`` would keep
    pointing at the first working directory's file after a ``chdir``.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
    prefix = "sqlite:///"
    path = uri[len(prefix) :]
    if uri.startswith(prefix) and path and not path.startswith("/") and path != ":memory:":
        return prefix + str(Path(path).resolve())
    return uri


class MLflowLogger(MLFlowLogger):
    """MLFlowLogger whose tracking URI comes from ``MLFLOW_TRACKING_URI`` when set, else the config.

    A run given by ``run_id`` (``segpipe fit --ckpt_path`` sets it from the checkpoint) is reopened:
    its status goes back to RUNNING and metrics continue at the checkpoint's step.

    When a logging call fails (server unreachable, store locked), training goes on: the failure is
    reported once as a warning, every later failure is counted, and :meth:`finalize` prints what was
    not logged. Checkpoints are always written to local disk first.

    Args:
        experiment_name: MLflow experiment (created if missing).
        run_name: display name of the run.
        tracking_uri: store or server, ``sqlite:///mlflow.db`` by default; the environment variable
            ``MLFLOW_TRACKING_URI`` overrides it.
        tags: run tags.
        log_model: log checkpoints as artifacts (``True``: at the end of training; ``all``: as written).
        artifact_location: artifact root for a newly created experiment (default for a SQLite store:
            ``<db dir>/<db stem>-artifacts/<experiment name>``, so two stores never share a folder).
        run_id: attach to an existing run instead of creating one.
        synchronous: block on every logging call; ``None`` (default) logs asynchronously to an
            ``http(s)://`` server, so steps never wait on the network, and synchronously to local stores.
    """

    def __init__(
        self,
        experiment_name: str = "segpipe",
        run_name: str | None = None,
        tracking_uri: str = DEFAULT_TRACKING_URI,
        tags: dict[str, Any] | None = None,
        log_model: Literal[True, False, "all"] = True,
        artifact_location: str | None = None,
        run_id: str | None = None,
        synchronous: bool | None = None,
    ) -> None:
        uri = effective_tracking_uri(tracking_uri)
        if synchronous is None:
            synchronous = not uri.startswith(("http://", "https://"))
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=uri,
            # MLflow tags are strings; a YAML/CLI value such as spatial_dims arrives as an int, which a tracking
            # server refuses (SQLite stores convert it silently).
            tags={key: str(value) for key, value in tags.items()} if tags else tags,
            log_model=log_model,
            artifact_location=artifact_location or local_artifact_location(uri, experiment_name),
            run_id=run_id,
            synchronous=synchronous,
        )
        self.tracking_uri = uri
        self.synchronous = synchronous
        self.resumed = run_id is not None
        self.failures: dict[str, int] = {}
        self._pending: list[RunOperations] = []

    @property
    def started(self) -> bool:
        """Whether the run exists already (reading ``run_id`` would otherwise create it)."""
        # MLFlowLogger keeps this state private and has no public accessor.
        return self._initialized

    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        # _run_id: the run to reopen, as given to MLFlowLogger; the public run_id would start a run first.
        reopen = not self.started and self._run_id is not None
        client = super().experiment
        if reopen:
            client.update_run(self._run_id, status="RUNNING")
        return client

    # ---- tolerance of a lost server ----------------------------------------------------------------
    def guard(self, what: str, call: Callable[[], Any]) -> Any:
        """Run ``call``; on failure warn (first time), count it under ``what`` and return None."""
        try:
            return call()
        except Exception as err:  # MLflow raises MlflowException, requests and sqlalchemy errors alike
            if not self.failures:
                rank_zero_warn(
                    f"MLflow at {self.tracking_uri} failed ({type(err).__name__}: {str(err).splitlines()[0][:200]});"
                    f" training continues, {what} is not logged, checkpoints stay on local disk."
                )
            self.failures[what] = self.failures.get(what, 0) + 1
            return None

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """Log ``params``, less LightningCLI's private entries (``_instantiator``, ``_class_path``)."""
        items = vars(params) if isinstance(params, Namespace) else dict(params or {})
        public = {k: v for k, v in items.items() if not str(k).startswith("_")}
        self.guard("params", lambda: super(MLflowLogger, self).log_hyperparams(public))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log one batch of metrics; asynchronous batches are checked as they complete.

        Lightning's batches carry the ``epoch``: their step is the epoch, not the optimiser step, so that
        MLflow's charts and compare view put runs of different datasets and batch sizes on one axis.
        """
        from mlflow.entities import Metric
        from mlflow.utils.async_logging.run_operations import RunOperations

        timestamp = int(time.time() * 1000)
        if "epoch" in metrics:
            step = int(metrics["epoch"])
        batch = [
            Metric(key=re.sub(r"[^a-zA-Z0-9_/. -]+", "", key), value=float(value), timestamp=timestamp, step=step or 0)
            for key, value in metrics.items()
            if not isinstance(value, str)
        ]
        self._collect_pending(block=False)
        operation = self.guard(
            "metrics", lambda: self.experiment.log_batch(self.run_id, metrics=batch, synchronous=self.synchronous)
        )
        if isinstance(operation, RunOperations):
            self._pending.append(operation)

    def _collect_pending(self, block: bool) -> None:
        """Count the failures of finished asynchronous batches (all of them, waiting, when ``block``)."""
        waiting = []
        for operation in self._pending:
            # RunOperations offers only a blocking wait(); its futures are the one way to ask without waiting.
            if block or all(future.done() for future in operation._operation_futures):
                self.guard("metrics", operation.wait)
            else:
                waiting.append(operation)
        self._pending = waiting

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.guard("checkpoint artifacts", lambda: super(MLflowLogger, self).after_save_checkpoint(checkpoint_callback))

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        self._collect_pending(block=True)
        self.guard("final status", lambda: super(MLflowLogger, self).finalize(status))
        if self.failures:
            lost = ", ".join(f"{n} {what} call(s)" for what, n in self.failures.items())
            # _run_id: the public run_id would try to start a run on the server that just failed.
            print(f"segpipe: warning: MLflow at {self.tracking_uri} did not record {lost} of run {self._run_id}.")

    @rank_zero_only
    def log_params_once(self, params: Mapping[str, Any]) -> list[str]:
        """Log the params the run does not hold yet; return the keys whose held value differs.

        MLflow params are immutable, so a resumed run keeps its first values; the caller records changes.
        """
        held = self.guard("params", lambda: dict(self.experiment.get_run(self.run_id).data.params)) or {}
        new = {k: v for k, v in params.items() if k not in held}
        changed = sorted(k for k, v in params.items() if k in held and held[k] != str(v)[:250])
        if new:
            self.log_hyperparams(new)
        return changed

    # ---- artifacts ---------------------------------------------------------------------------------
    @rank_zero_only
    def log_figure(self, figure: Figure, artifact_file: str) -> None:
        """Save ``figure`` as ``artifact_file`` (e.g. ``figures/overlays/epoch_004.png``) in the run."""
        self.guard(artifact_file, lambda: self.experiment.log_figure(self.run_id, figure, artifact_file))

    @rank_zero_only
    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        self.guard(str(local_path), lambda: self.experiment.log_artifact(self.run_id, str(local_path), artifact_path))

    @rank_zero_only
    def log_text(self, text: str, artifact_file: str) -> None:
        self.guard(artifact_file, lambda: self.experiment.log_text(self.run_id, text, artifact_file))

    @rank_zero_only
    def log_dataset(
        self, name: str, digest: str, source: str, tags: Mapping[str, str], context: str = "training"
    ) -> None:
        """Record a dataset as the run's input: ``name`` and ``digest`` in MLflow's Datasets column (and its
        filter), ``source`` (a folder) and ``tags`` (e.g. split sizes) in the run's Datasets panel."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        dataset = Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": source}))
        input_tags = [InputTag(MLFLOW_DATASET_CONTEXT, context), *(InputTag(k, str(v)) for k, v in tags.items())]
        self.guard("dataset", lambda: self.experiment.log_inputs(self.run_id, [DatasetInput(dataset, input_tags)]))

    @rank_zero_only
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.guard("tags", lambda k=key, v=value: self.experiment.set_tag(self.run_id, k, str(v)[:5000]))


def mlflow_logger(trainer: pl.Trainer) -> MLflowLogger | None:
    """The trainer's segpipe MLflow logger, if it has one."""
    return next((lg for lg in trainer.loggers if isinstance(lg, MLflowLogger)), None)


def run_folder(trainer: pl.Trainer) -> Path:
    """The run's local output folder: the checkpoints' parent (``outputs/<experiment>/<run>``), else
    the trainer's ``default_root_dir``."""
    dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
    return Path(dirpath).parent if dirpath else Path(trainer.default_root_dir)


def scratch_dir() -> tempfile.TemporaryDirectory:
    """A temporary folder for files that only go to the run."""
    return tempfile.TemporaryDirectory(prefix="segpipe-")
