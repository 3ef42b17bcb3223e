"""Running a tool's commands: timed stages, their logs, and the cached result of a (set, tool) run."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from segpipe.errors import SegpipeError
from segpipe.io.atomic import write_text


def run_stage(
    command: Sequence[str], log: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> float:
    """Run ``command`` with its output in ``log``; returns its wall time in seconds.

    Raises:
        SegpipeError: naming the command and the log when it fails.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(list(command), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, check=False)
    if done.returncode != 0:
        raise SegpipeError(f"{command[0]} failed with exit {done.returncode}; see {log}")
    return time.perf_counter() - start


def result_path(work: Path, set_name: str, tool: str) -> Path:
    """Where the result of ``tool`` on ``set_name`` is cached, so that a later run completes the table."""
    return work / "results" / f"{set_name}_{tool}.json"


def save_result(work: Path, set_name: str, tool: str, result: Mapping[str, object]) -> Path:
    path = result_path(work, set_name, tool)
    return write_text(path, json.dumps(dict(result), indent=2) + "\n")


def load_result(work: Path, set_name: str, tool: str) -> dict[str, object] | None:
    path = result_path(work, set_name, tool)
    return json.loads(path.read_text()) if path.is_file() else None
