"""Where a new experiment keeps its artifacts: beside its own local database.

MLflow puts the artifacts of a ``sqlite:///`` store's experiments under ``./mlruns/<experiment id>`` of the
working directory, so two stores in one folder, or two runs of segpipe from one folder on different
databases, share ``mlruns/1``. segpipe gives a new experiment of a SQLite store the folder
``<database dir>/<database stem>-artifacts/<experiment name>`` instead; servers (which own their
artifact root), other stores and explicit artifact locations are left as they are.
"""

from __future__ import annotations

import re
from pathlib import Path

SQLITE = "sqlite:///"


def local_artifact_location(tracking_uri: str, experiment_name: str) -> str | None:
    """The artifact location (a ``file://`` URI) for a new experiment of a SQLite store, else None.

    Args:
        tracking_uri: the store, e.g. ``sqlite:////abs/mlflow.db`` (a relative path is taken from the
            working directory).
        experiment_name: the experiment's name; characters other than letters, digits, ``.``, ``_`` and
            ``-`` become ``_`` in the folder name.
    """
    path = tracking_uri.removeprefix(SQLITE)
    if not tracking_uri.startswith(SQLITE) or path in ("", ":memory:"):
        return None
    database = Path(path).resolve()
    folder = re.sub(r"[^A-Za-z0-9._-]", "_", experiment_name)
    return (database.parent / f"{database.stem}-artifacts" / folder).as_uri()
