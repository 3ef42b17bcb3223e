"""``segpipe plan``: sizes and durations, one-line refusals, the summary table, the plan and fingerprint files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import tiny_3d_config, tiny_config, write_dataset

from segpipe.cli import main
from segpipe.cli.plan import parse_size, plan_dims, plan_params
from segpipe.errors import SegpipeError
from segpipe.planning.plan_yaml import read_plan


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # Rich folds long cells at the default 80 columns


@pytest.mark.parametrize(
    ("text", "size"),
    [("24GiB", 24 * 2**30), ("16GB", 16 * 10**9), ("512 MiB", 512 * 2**20), ("1000", 1000), ("2k", 2000)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "0GiB", "12XB", "-1GB"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(SegpipeError, match="device memory"):
        parse_size(text)


def test_plan_params_of_a_2d_and_a_3d_config(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    config["data"]["init_args"]["train_transforms"] = [{"name": "RandomCrop", "height": 32, "width": 24}]
    assert plan_params(config) == {
        "plan/dims": "2d",
        "plan/patch_size": "32x24",
        "plan/batch_size": "4",
        "plan/network": "unet d2w4",
    }
    volumes = tiny_3d_config(tmp_path)
    budget = {"class_path": "segpipe.callbacks.TimeBudget", "init_args": {"budget_seconds": 180.0}}
    volumes["trainer"]["callbacks"] = [budget]
    params = plan_params(volumes)
    assert (params["plan/dims"], params["plan/patch_size"], params["plan/budget_s"]) == ("3d", "16x16x8", "180")
    volumes["data"]["init_args"]["training_mode"] = "slices"
    assert plan_dims(volumes) == "slices"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing_folder"], "missing_folder: no such dataset folder or case list"),
        (["{data}", "--time-budget", "soon"], "time budget 'soon'"),
        (["{data}", "--dims", "4d"], "argument --dims: invalid choice"),
        (["{data}", "--network", "unett"], "unknown model 'unett'"),
    ],
)
def test_refusals_are_one_line_exit_2_and_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    data = write_dataset(tmp_path / "data", n=4)
    assert main(["plan", *[a.format(data=data) for a in args]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segpipe: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "plan.yaml").exists() and not (tmp_path / "fingerprint.json").exists()


@pytest.mark.slow
def test_plan_writes_a_config_with_reasons_and_the_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    data = write_dataset(tmp_path / "data", n=12)
    assert main(["plan", str(data), "--out", "plans/tiny.yaml", "--time-budget", "1h"]) == 0
    out = capsys.readouterr().out
    plan_file, fingerprint_file = tmp_path / "plans/tiny.yaml", tmp_path / "plans/fingerprint.json"
    config = read_plan(plan_file)
    assert json.loads(fingerprint_file.read_text())["case_names"]
    callbacks = {c["class_path"]: c["init_args"] for c in config["trainer"]["callbacks"]}
    budget = callbacks["segpipe.callbacks.TimeBudget"]
    assert budget["budget_seconds"] == 3600 and 0 < budget["planned_seconds"] < 3600
    assert budget["planned_memory_bytes"] > 0
    logged = callbacks["segpipe.tracking.plan_artifacts.LogPlan"]
    assert logged["files"] == ["plans/tiny.yaml", "plans/fingerprint.json"]
    assert logged["params"]["plan/dims"] == "2d" and logged["params"]["plan/budget_s"] == "3600"
    text = plan_file.read_text()
    assert "  max_epochs: " in text and "# calibrated: " in text
    assert "#   cases: " in text
    for row in ("dims", "patch", "batch", "network", "epochs x steps", "estimated memory", "planned time"):
        assert row in out
    assert "wrote plans/tiny.yaml and plans/fingerprint.json" in out
