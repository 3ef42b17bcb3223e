"""The tracking server as docker-compose.yml deploys it: ``mlflow server`` on PostgreSQL with served artifacts.

A throwaway PostgreSQL server (Debian's ``postgresql`` package, installed by ``.ci/run``) on a free loopback
port, the compose file's ``mlflow`` service on it (its command, its environment, its backend URI with the
compose host replaced by 127.0.0.1), a fit that logs to it and a resumed fit that continues the same run.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import sqlalchemy
import yaml
from builders import free_port, tiny_config, wait_for_mlflow, write_config

from segpipe.cli import main
from segpipe.tracking.resume import run_info_from_checkpoint

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def postgres_bin() -> Path | None:
    """The folder of ``initdb``, ``pg_ctl`` and ``createdb``: on PATH, else Debian's newest version."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?message}`` with ``values``."""

    def value(match: re.Match) -> str:
        name, operator, fallback = match.group(1), match.group(2), match.group(3)
        if name in values:
            return values[name]
        if operator == ":-":
            return fallback
        raise KeyError(f"{name} is not set and has no default in {COMPOSE.name}")

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", value, text)


def as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: as root, its programs run as the package's ``postgres`` user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="module")
def postgres() -> Iterator[tuple[str, dict[str, str]]]:
    """A PostgreSQL server with the compose file's user, password and database.

    Yields:
        ``host:port`` and the values that the compose file's ``${...}`` take (the password).
    """
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin)")
    run_as = as_postgres_user()
    service = yaml.safe_load(COMPOSE.read_text())["services"]["postgres"]["environment"]
    user, database, password = service["POSTGRES_USER"], service["POSTGRES_DB"], secrets.token_hex(8)
    # Outside pytest's tmp folders (mode 0700, owned by the test's user): the postgres user must reach it.
    home = Path(tempfile.mkdtemp(prefix="segpipe-postgres-"))
    (home / "password").write_text(password)
    if run_as:
        shutil.chown(home, "postgres")
        shutil.chown(home / "password", "postgres")
    data, port = home / "data", free_port()
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", user, "--pwfile", str(home / "password")]
    subprocess.run([*run_as, *initdb, "--auth", "scram-sha-256"], check=True, capture_output=True)
    # fsync off: a throwaway database on a shared machine, nothing to recover after a crash
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
    pg_ctl = [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(home / "postgres.log")]
    subprocess.run([*pg_ctl, "-o", options, "-w", "start"], check=True, capture_output=True)
    try:
        createdb = [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, database]
        subprocess.run(createdb, check=True, capture_output=True, env={**os.environ, "PGPASSWORD": password})
        yield f"127.0.0.1:{port}", {"MLFLOW_DB_PASSWORD": password}
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """The compose file's ``mlflow`` service on ``postgres``; artifacts go to their own folder.

    Yields:
        The server's URI, the backend store URI and the artifact folder.
    """
    address, values = postgres
    service = yaml.safe_load(COMPOSE.read_text())["services"]["mlflow"]
    env = {name: interpolate(str(value), values) for name, value in service["environment"].items()}
    backend = env["MLFLOW_BACKEND_STORE_URI"].replace("@postgres:5432/", f"@{address}/")
    assert backend != env["MLFLOW_BACKEND_STORE_URI"], "the compose file's backend URI no longer names postgres:5432"
    artifacts = tmp_path_factory.mktemp("artifacts")
    env |= {"MLFLOW_BACKEND_STORE_URI": backend, "MLFLOW_ARTIFACTS_DESTINATION": str(artifacts)}
    port = free_port()
    command = [a.replace("0.0.0.0", "127.0.0.1").replace("5000", str(port)) for a in service["command"]]
    log = artifacts.parent / "mlflow-server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *service["entrypoint"], *command, "--workers", "1"],
            env={**os.environ, **env},
            cwd=artifacts.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_mlflow(uri, proc, timeout=240, log=log)
        yield uri, backend, artifacts
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def val_dice_steps(run_id: str) -> list[int]:
    return sorted(m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "val/dice"))


@pytest.mark.slow
def test_fit_and_resumed_fit_log_one_run_to_mlflow_on_postgres(
    server, flat_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    uri, backend, artifacts = server
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    mlflow.set_tracking_uri(uri)
    config = tiny_config(flat_dataset, overlays={"every_n_epochs": 0}, model_logging={"enabled": False})
    path = write_config(tmp_path / "tiny.yaml", config)

    assert main(["fit", "--config", str(path), "--trainer.max_epochs", "2", "--test_after_fit", "false"]) == 0
    [first] = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    steps_before = val_dice_steps(first.info.run_id)
    assert len(steps_before) == 2

    assert main(["fit", "--config", str(path), "--ckpt_path", "last", "--trainer.max_epochs", "3"]) == 0
    runs = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    assert [r.info.run_id for r in runs] == [first.info.run_id]
    assert runs[0].info.status == "FINISHED" and "test/dice_pooled" in runs[0].data.metrics
    steps = val_dice_steps(first.info.run_id)
    assert steps[:2] == steps_before and len(steps) == 3 and steps[2] > steps_before[-1]
    epochs = {int(m.value) for m in mlflow.MlflowClient().get_metric_history(first.info.run_id, "epoch")}
    assert {0, 1, 2} <= epochs  # (the test after fit logs one more)
    last = next(Path("outputs").rglob("last.ckpt"))
    assert run_info_from_checkpoint(last)["run_id"] == first.info.run_id

    # The run is in PostgreSQL, its files went through the server into the artifact folder, none stayed here.
    engine = sqlalchemy.create_engine(backend)
    with engine.connect() as connection:
        rows = connection.execute(sqlalchemy.text("SELECT run_uuid, status FROM runs")).all()
    engine.dispose()
    assert [tuple(row) for row in rows] == [(first.info.run_id, "FINISHED")]
    assert len(list(artifacts.rglob(f"{first.info.run_id}/artifacts/config/config.yaml"))) == 1
    assert len(list(artifacts.rglob("config/config-resumed-*.yaml"))) == 1
    assert not Path("mlruns").exists() and not Path("mlartifacts").exists()
