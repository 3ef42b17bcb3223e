"""End to end through the CLI: the compare-friendly artifacts at the run's root and the per-case means."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from builders import tiny_config, write_config

from segpipe.cli import main


@pytest.mark.slow
def test_fit_logs_root_figures_summary_case_table_and_per_case_means(
    tmp_path: Path, flat_dataset: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = write_config(tmp_path / "tiny.yaml", tiny_config(flat_dataset, overlays={"every_n_epochs": 2}))
    assert main(["fit", "--config", str(config)]) == 0
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    client, run_id = mlflow.MlflowClient(), run.info.run_id

    root = {a.path for a in client.list_artifacts(run_id) if not a.is_dir}
    assert {"overlay_best.png", "test_boxplots.png", "summary.json", "test_cases.json"} <= root

    def download(path: str) -> str:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)).read_text()

    summary = json.loads(download("summary.json"))
    best = next(Path("outputs").rglob("best-epoch*.ckpt"))
    assert summary["tested_checkpoint"] == summary["best_checkpoint"] == best.name
    assert summary["monitor"] == "val/dice" and f"dice{summary['best_score']:.4f}" in best.name
    assert f"epoch{summary['best_epoch']:03d}" in best.name and summary["tested_epoch"] == summary["best_epoch"]
    assert summary["distance_unit"] == "px"
    pooled = {k: v for k, v in run.data.metrics.items() if k.startswith("test/dice") and "_mean_" not in k}
    assert summary["test_dice_pooled"] == pytest.approx(pooled) and pooled

    table = json.loads(download("test_cases.json"))
    assert table["columns"] == [
        "case", "class", "dice", "iou", "hd95_px", "asd_px", "volume_pred", "volume_ref", "checkpoint",
    ]  # fmt: skip
    assert len(table["data"]) == 3 * 2 and {row[-1] for row in table["data"]} == {best.name}

    metrics = run.data.metrics
    for k, name in ((1, "class1"), (2, "class2")):
        dice = [row[2] for row in table["data"] if row[1] == name and row[2] is not None]
        assert metrics[f"test/dice_mean_{name}"] == pytest.approx(sum(dice) / len(dice))
        assert metrics[f"test/dice_mean_c{k}"] == metrics[f"test/dice_mean_{name}"]
        assert summary["test_dice_mean_per_case"][name] == pytest.approx(metrics[f"test/dice_mean_{name}"])
    means = (metrics["test/dice_mean_class1"] + metrics["test/dice_mean_class2"]) / 2
    assert metrics["test/dice_mean_fg_mean"] == pytest.approx(means)
    assert any(k.startswith("test/hd95_px_mean_") for k in metrics) or all(row[4] is None for row in table["data"])
    assert not any("hd95_mm" in k for k in metrics)  # PNG slices carry no spacing

    (model,) = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    linked = {m.key: m.value for m in model.metrics}
    assert linked["val/dice_best"] == pytest.approx(summary["best_score"])
    assert linked["test/dice_mean_fg_mean"] == pytest.approx(metrics["test/dice_mean_fg_mean"])
