"""``segpipe summary``: the config is read by the fit parser (defaults and overrides hold); one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from segpipe.cli import main


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # Rich folds long cells at the default 80 columns


def _write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


CONFIG = """
model:
  model: unet
  spatial_dims: 2
  in_channels: 1
  num_classes: 3
  model_kwargs: {depth: 4, base_channels: 16}
data:
  class_path: segpipe.data.FolderDataModule
  init_args:
    root: nowhere
    batch_size: 8
    train_transforms:
      - {name: RandomCrop, height: 192, width: 224}
"""


FOLDER_DATA = "data: {class_path: segpipe.data.FolderDataModule, init_args: {root: nowhere}}"


def summary(args: list[str], capsys) -> str:
    assert main(["summary", *args]) == 0
    return capsys.readouterr().out


def test_default_input_is_the_data_batch_and_crop(tmp_path, capsys):
    out = summary(["--config", _write_config(tmp_path, CONFIG)], capsys)
    assert "Layers for input 8x1x192x224" in out
    assert "1,942,323" in out  # parameters of the demo U-Net


def test_overrides_change_what_is_summarised(tmp_path, capsys):
    args = ["--config", _write_config(tmp_path, CONFIG), "--data.init_args.batch_size", "2"]
    out = summary([*args, "--model.model_kwargs", "{depth: 2, base_channels: 4}"], capsys)
    assert "Layers for input 2x1x192x224" in out
    assert "1,942,323" not in out and "Total" in out


def test_defaults_are_the_fit_parsers(tmp_path, capsys):
    # no model section: SegmentationTask's defaults (a 2D U-Net, 1 channel); the DataModule's batch_size
    out = summary(["--config", _write_config(tmp_path, FOLDER_DATA)], capsys)
    assert "Layers for input 8x1x256x256" in out


def test_explicit_input_and_precision(tmp_path, capsys):
    config = """
model:
  model: fcn8s
  spatial_dims: 3
  in_channels: 2
  num_classes: 4
  model_kwargs: {base_channels: 4, fc_channels: 8, fc_kernel: 3}
data: {class_path: segpipe.data.VolumeDataModule, init_args: {root: nowhere}}
"""
    path = _write_config(tmp_path, config)
    out = summary(["--config", path, "--input", "1x2x17x19x21", "--precision", "bf16-mixed"], capsys)
    assert "Layers for input 1x2x17x19x21" in out and "ConvTranspose3d" in out
    assert "precision bf16-mixed" in out


def test_3d_input_is_the_volume_batch_and_patch(tmp_path, capsys):
    config = """
model: {model: segnet, spatial_dims: 3, num_classes: 2, model_kwargs: {base_channels: 2}}
data: {class_path: segpipe.data.VolumeDataModule, init_args: {root: nowhere, patch_size: [32, 48, 40]}}
"""
    # batch_size is VolumeDataModule's default
    assert "Layers for input 2x1x32x48x40" in summary(["--config", _write_config(tmp_path, config)], capsys)


@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (["--config", "{missing}"], None, "does not exist"),
        (["--input", "4x1xbad"], CONFIG, "--input"),
        (["--input", "4x3x64x64"], CONFIG, "input channels"),
        (["--precision", "12"], CONFIG, "unknown precision '12'"),
        ([], "model: {model: unett}\n" + FOLDER_DATA, "did you mean"),
        ([], "model: [1, 2", "config.yaml: problems parsing config"),
        ([], "data: {batch_size: 2}", "data"),
        ([], "model: {model: unet}", "required: data"),
        ([], "model: {model: unet, model_kwargs: {depht: 3}}\n" + FOLDER_DATA, "depht"),
        (["--model.num_clases", "3"], CONFIG, "num_clases"),
        ([], None, "--config"),
    ],
)
def test_errors_are_one_line(tmp_path, capsys, args, config, message):
    argv = [a.format(missing=tmp_path / "nope.yaml") for a in args]
    if config is not None:
        argv = ["--config", _write_config(tmp_path, config), *argv]
    assert main(["summary", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("segpipe: error: ")
    assert message.lower() in err.lower()
