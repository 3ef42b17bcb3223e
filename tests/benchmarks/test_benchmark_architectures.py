"""The read-back of benchmarks/architectures.py: one store per fit, no tracking URI leaking to the next fit."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import mlflow
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "architectures.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_architectures", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _file_stores(monkeypatch):
    # File stores read back like the benchmark's SQLite stores, without seconds of schema migrations each.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def _store_with_run(path: Path, test_dice: float, stamps_ms: list[int]) -> str:
    uri = path.as_uri()
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment(path.stem))
    for step, stamp in enumerate(stamps_ms):
        client.log_metric(run.info.run_id, "val/dice", 0.5 + 0.1 * step, timestamp=stamp, step=step)
    client.log_metric(run.info.run_id, "test/dice_pooled", test_dice)
    client.set_terminated(run.info.run_id)
    return uri


def test_read_back_two_stores_in_one_process(bench, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = _store_with_run(tmp_path / "segnet", 0.81, [1_000, 3_000, 5_500])
    second = _store_with_run(tmp_path / "fcn8s", 0.72, [0, 4_000])
    a = bench.read_back(first)
    b = bench.read_back(second)
    assert (a["epochs"], a["test_dice"], a["s_per_epoch"]) == (3, 0.81, 2.25)
    assert a["best_val_dice"] == pytest.approx(0.7)
    assert (b["epochs"], b["test_dice"], b["s_per_epoch"]) == (2, 0.72, 4.0)
    assert math.isnan(b["test_gm"])
    # mlflow.set_tracking_uri exports the variable, and segpipe lets it win over --tracking_uri: the
    # second fit of an invocation would then log into the first fit's store (the IndexError this fixes).
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_fit_env_drops_an_inherited_tracking_uri(bench, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    monkeypatch.setenv("SEGPIPE_KEEP", "1")
    env = bench.fit_env()
    assert "MLFLOW_TRACKING_URI" not in env and env["SEGPIPE_KEEP"] == "1"


def test_read_back_refuses_an_empty_store(bench, tmp_path):
    uri = (tmp_path / "empty").as_uri()
    mlflow.MlflowClient(tracking_uri=uri).search_experiments()
    with pytest.raises(RuntimeError, match="expected one run after the fit, found 0"):
        bench.read_back(uri)


def test_record_appends_rows_under_the_heading(bench, tmp_path):
    doc = tmp_path / "benchmarks.md"
    bench.record(doc, ["| row 1 |"])
    doc.write_text(doc.read_text() + "\n## Other\n\nkept\n")
    bench.record(doc, ["| row 2 |", "| row 3 |"])
    text = doc.read_text()
    assert text.count(bench.HEADING) == 1
    assert text.index("| row 1 |") < text.index("| row 2 |") < text.index("| row 3 |") < text.index("## Other")
    assert text.endswith("## Other\n\nkept\n")
