"""Which checkpoints an ensemble is made of: files, folders of runs, or an MLflow experiment's runs.

``--ensemble`` takes any mix of:

- a checkpoint file;
- a folder: the best checkpoint of every run folder under it (each folder holding ``*.ckpt`` files, e.g.
  ``outputs/<experiment id>/`` after five folds);
- ``mlflow:<experiment name>``: the best checkpoint of each finished run of that experiment, from the
  run's folder ``<root>/<experiment id>/<run id>/checkpoints`` where segpipe writes it, else from the
  checkpoint the run logged as an artifact with the alias ``best``.

In a folder, the best checkpoint is the only ``*.ckpt`` besides ``last.ckpt``, or, with several, the one
``last.ckpt`` names as its checkpoint callback's ``best_model_path``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lightning.pytorch.utilities import rank_zero_info

from segpipe.errors import SegpipeError
from segpipe.io.checkpoints import safe_load

if TYPE_CHECKING:
    from mlflow import MlflowClient

MLFLOW_PREFIX = "mlflow:"
LAST_FILE = "last.ckpt"


def resolve_members(sources: Sequence[str], root: str | Path, tracking_uri: str) -> list[Path]:
    """The checkpoint files named by ``sources`` (files, folders, ``mlflow:<experiment>``), in order.

    Args:
        sources: what ``--ensemble`` was given.
        root: the runs' output root (``trainer.default_root_dir``), for MLflow runs' folders.
        tracking_uri: the MLflow store of ``mlflow:`` sources.

    Raises:
        SegpipeError: a source that is neither a file, a folder with checkpoints, nor an experiment with
            finished runs that have checkpoints.
    """
    found: list[Path] = []
    for source in sources:
        if source.startswith(MLFLOW_PREFIX):
            found += experiment_checkpoints(source.removeprefix(MLFLOW_PREFIX), Path(root), tracking_uri)
        elif Path(source).is_dir():
            folders = sorted({path.parent for path in Path(source).rglob("*.ckpt")})
            if not folders:
                raise SegpipeError(f"--ensemble: {source}: no checkpoint (*.ckpt) in this folder")
            found += [best_checkpoint_in(folder) for folder in folders]
        elif Path(source).is_file():
            found.append(Path(source))
        else:
            raise SegpipeError(f"--ensemble: {source}: no such file or folder (or mlflow:<experiment name>)")
    return found


def best_checkpoint_in(folder: Path) -> Path:
    """The best checkpoint of one run's checkpoint folder (see the module's rule).

    Raises:
        SegpipeError: no checkpoint besides ``last.ckpt``, or several and none named best.
    """
    candidates = sorted(path for path in folder.glob("*.ckpt") if path.name != LAST_FILE)
    if len(candidates) == 1:
        return candidates[0]
    last = folder / LAST_FILE
    named = _best_named_in(last) if last.is_file() else None
    if named is not None and folder / named in candidates:
        return folder / named
    raise SegpipeError(
        f"--ensemble: {folder}: {len(candidates)} checkpoints besides {LAST_FILE} and none named best by it; "
        "pass the checkpoint files"
    )


def _best_named_in(last: Path) -> str | None:
    """The file name of the ``best_model_path`` that ``last``'s checkpoint callback recorded."""
    for state in (safe_load(last).get("callbacks") or {}).values():
        best = state.get("best_model_path") if isinstance(state, dict) else None
        if best:
            return Path(best).name
    return None


def experiment_checkpoints(experiment_name: str, root: Path, tracking_uri: str) -> list[Path]:
    """The best checkpoint of each finished run of an MLflow experiment, oldest run first; runs without a
    checkpoint (e.g. a separate ``segpipe test`` run) are skipped.

    Raises:
        SegpipeError: the experiment is unknown or none of its finished runs has a checkpoint.
    """
    from mlflow import MlflowClient  # imported here: only mlflow: sources need it

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise SegpipeError(f"--ensemble: mlflow:{experiment_name}: no such experiment at {tracking_uri}")
    runs = client.search_runs(
        [experiment.experiment_id], "attributes.status = 'FINISHED'", order_by=["attributes.start_time ASC"]
    )
    found = []
    for run in runs:
        folder = root / experiment.experiment_id / run.info.run_id / "checkpoints"
        checkpoint = best_checkpoint_in(folder) if folder.is_dir() else _logged_best(client, run.info.run_id, root)
        if checkpoint is None:
            rank_zero_info(f"segpipe: --ensemble: run {run.info.run_id} has no checkpoint; skipped")
            continue
        found.append(checkpoint)
    if not found:
        raise SegpipeError(f"--ensemble: mlflow:{experiment_name}: no finished run with a checkpoint at {tracking_uri}")
    return found


def _logged_best(client: MlflowClient, run_id: str, root: Path) -> Path | None:
    """The run's checkpoint artifact with the alias ``best`` (Lightning's MLflow logger layout:
    ``<stem>/<stem>.ckpt`` + ``<stem>/aliases.txt``), downloaded under ``<root>/ensemble-downloads``."""
    target = root / "ensemble-downloads" / run_id
    target.mkdir(parents=True, exist_ok=True)
    for entry in client.list_artifacts(run_id):
        inside = {a.path for a in client.list_artifacts(run_id, entry.path)} if entry.is_dir else set()
        if f"{entry.path}/aliases.txt" not in inside:
            continue
        aliases = Path(client.download_artifacts(run_id, f"{entry.path}/aliases.txt", str(target))).read_text()
        if "'best'" in aliases:
            return Path(client.download_artifacts(run_id, f"{entry.path}/{Path(entry.path).name}.ckpt", str(target)))
    return None
