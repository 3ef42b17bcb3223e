"""A plan file: comments beside their keys, a fingerprint header, and the same config read back."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import plan_of

from segpipe.config import data_init_args, model_hparams, read_config
from segpipe.errors import DataError
from segpipe.planning.plan_yaml import read_plan, write_plan

FINGERPRINT = {
    "root": "data/demo",
    "case_names": ["a", "b", "c"],
    "shapes": [[240, 208], [236, 200], [240, 210]],
    "spacings": [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]],
    "modality": ["T1"],
    "class_names": ["background", "grey_matter", "white_matter"],
    "class_fraction": [0.8, 0.12, 0.08],
}


def resolved_demo_config() -> dict:
    """configs/demo.yaml as the fit parser resolves it, as plain data (without the names of its files)."""
    return without_file_names(read_config(["--config", "configs/demo.yaml"]).as_dict())


def without_file_names(value: object) -> object:
    """``value`` less jsonargparse's records of the files it read (``config``, ``__path__``)."""
    if isinstance(value, dict):
        return {k: without_file_names(v) for k, v in value.items() if k != "config" and not k.startswith("__")}
    return [without_file_names(v) for v in value] if isinstance(value, list | tuple) else value


def test_round_trip_keeps_values_and_writes_reasons_as_comments(tmp_path: Path) -> None:
    config = resolved_demo_config()
    reasons = {
        "data.init_args.batch_size": "4 patches fit 1.2 GiB: the memory budget",
        "model.model_kwargs.depth": "4 poolings keep 15 x 13 at the bottleneck",
        "trainer.max_epochs": "calibrated: 0.41 s/step # not a second comment",
        "data.init_args.train_transforms": "2D: albumentations",
        "model.model_kwargs.dropout": "none: no gain at this size",
    }
    path = write_plan(plan_of(config, reasons, FINGERPRINT), tmp_path / "plan.yaml")
    assert read_plan(path) == config
    lines = path.read_text().splitlines()
    assert "    batch_size: 4  # 4 patches fit 1.2 GiB: the memory budget" in lines
    assert "    depth: 4  # 4 poolings keep 15 x 13 at the bottleneck" in lines
    assert f"  max_epochs: {config['trainer']['max_epochs']}  # calibrated: 0.41 s/step # not a second comment" in lines
    assert "    train_transforms:  # 2D: albumentations" in lines
    # a key the config leaves out: its reason is in the header
    assert "#   model.model_kwargs.dropout: none: no gain at this size" in lines
    assert "#   cases: 3" in lines
    assert "#   median shape: [240.0, 208.0]" in lines
    assert "#   class frequencies: background 0.8000, grey_matter 0.1200, white_matter 0.0800" in lines
    assert not list(tmp_path.glob(".*.tmp*"))  # written atomically: no temporary file left


def test_plan_file_reads_with_the_fit_parser(tmp_path: Path) -> None:
    config = resolved_demo_config()
    config["data"]["init_args"]["batch_size"] = 7
    path = write_plan(plan_of(config, {"data.init_args.batch_size": "why: seven"}), tmp_path / "plan.yaml")
    parsed = read_config(["--config", str(path)])
    assert data_init_args(parsed)["batch_size"] == 7
    assert model_hparams(parsed)["model_kwargs"] == config["model"]["model_kwargs"]


def test_read_plan_refuses_what_is_not_a_plan(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.yaml: cannot read the plan"):
        read_plan(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(DataError, match=r"list\.yaml: a plan is a YAML mapping"):
        read_plan(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(DataError, match=r"bad\.yaml: not YAML"):
        read_plan(tmp_path / "bad.yaml")
