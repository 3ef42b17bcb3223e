"""``segpipe predict --onnx``: the exported file gives the masks of ``segpipe predict --ckpt_path``."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch
from builders import tiny_3d_config, tiny_config, write_config, write_dataset, write_volumes
from PIL import Image

from segpipe.cli import main
from segpipe.data import VolumeDataModule
from segpipe.inference.onnx_runtime import load_segmenter


@pytest.fixture(autouse=True)
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def randomize_weights(ckpt: Path) -> None:
    """Seeded unit-gain convolution weights in place of one step's nearly untrained ones, so that the
    masks compared hold every class rather than background only."""
    checkpoint = torch.load(ckpt, weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for key, value in checkpoint["state_dict"].items():
        if key.startswith("net.") and key.endswith("weight") and value.ndim >= 3:
            fan_in = value[0].numel()
            checkpoint["state_dict"][key] = torch.randn(value.shape, generator=generator) / fan_in**0.5
    torch.save(checkpoint, ckpt)


def fit_and_export(workdir: Path, config: dict, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """``segpipe fit`` for one step in ``workdir`` (a checkpoint with the DataModule's settings), random
    weights, then ``segpipe export --format onnx``: (config, checkpoint, ONNX file)."""
    monkeypatch.chdir(workdir)
    config["trainer"] |= {"max_steps": 1, "limit_val_batches": 0}
    path = write_config(workdir / "config.yaml", config)
    assert main(["fit", "--config", str(path), "--test_after_fit", "false"]) == 0
    (ckpt,) = workdir.glob("outputs/*/*/checkpoints/last.ckpt")
    randomize_weights(ckpt)
    model = workdir / "model.onnx"
    assert main(["export", "--ckpt", str(ckpt), "--format", "onnx", "--output", str(model)]) == 0
    return path, ckpt, model


def predict_with_checkpoint(config: Path, ckpt: Path, inputs: Path, output: Path) -> None:
    args = ["predict", "--config", str(config), "--ckpt_path", str(ckpt), "--data.init_args.predict_dir", str(inputs)]
    assert main([*args, "--predict_writer.output_dir", str(output)]) == 0


@pytest.mark.slow
def test_2d_image_folder_gives_the_masks_of_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = write_dataset(tmp_path / "data", 8)
    config = tiny_config(data)
    config["data"]["init_args"]["normalization"] = "dataset"  # statistics that must travel in the metadata
    config_path, ckpt, model = fit_and_export(tmp_path, config, monkeypatch)
    inputs = write_dataset(tmp_path / "unseen", 3, height=41, width=29, seed=7) / "images"

    predict_with_checkpoint(config_path, ckpt, inputs, tmp_path / "torch")
    assert main(["predict", "--onnx", str(model), "--input", str(inputs), "--output", str(tmp_path / "onnx")]) == 0

    labels = set()
    for image in sorted(inputs.glob("*.png")):
        expected = np.asarray(Image.open(tmp_path / "torch" / image.name))
        got = np.asarray(Image.open(tmp_path / "onnx" / image.name))
        assert got.shape == expected.shape == (41, 29)
        np.testing.assert_array_equal(got, expected)
        labels |= set(np.unique(got).tolist())
    assert len(labels) > 1  # masks with several classes, not constants


@pytest.mark.slow
def test_volume_folder_gives_the_masks_of_the_checkpoint_on_the_input_grid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    data = write_volumes(tmp_path / "data", 4)
    config = tiny_3d_config(data)
    # flip TTA at predict: from the checkpoint's hyperparameters, which LightningCLI puts over the config's
    config["model"]["tta"] = True
    config_path, ckpt, model = fit_and_export(tmp_path, config, monkeypatch)
    inputs = write_volumes(tmp_path / "unseen", 2, seed=5) / "images"

    segmenter = load_segmenter(model)  # the metadata gives the task's window and classes
    inference = segmenter.inference()
    assert (segmenter.spatial_dims, segmenter.num_classes) == (3, 3)
    assert (list(inference.roi or []), inference.overlap, inference.dtype) == ([16, 16, 8], 0.5, "float32")

    # the export carries the plan the training DataModule resolved (checkpoint state), median spacing included
    plan = VolumeDataModule(**config["data"]["init_args"]).plan()
    assert segmenter.preprocessing_plan() == plan
    predict_with_checkpoint(config_path, ckpt, inputs, tmp_path / "torch")
    onnx_args = ["--input", str(inputs), "--output", str(tmp_path / "onnx"), "--tta"]
    assert main(["predict", "--onnx", str(model), *onnx_args]) == 0

    for source in sorted(inputs.glob("*.nii.gz")):
        expected, got, original = (nib.load(d / source.name) for d in (tmp_path / "torch", tmp_path / "onnx", inputs))
        assert got.shape == original.shape
        np.testing.assert_array_equal(got.affine, original.affine)
        np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(expected.dataobj))
        assert len(np.unique(np.asarray(got.dataobj))) > 1


def _error_line(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err.strip()


def test_a_missing_invalid_or_foreign_onnx_file_is_one_line_naming_it(tmp_path: Path, capsys):
    images = write_dataset(tmp_path / "data", 1) / "images"
    missing, garbage, foreign = tmp_path / "missing.onnx", tmp_path / "garbage.onnx", tmp_path / "foreign.onnx"
    garbage.write_text("not a model")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(foreign))
    out = tmp_path / "out"
    for path, problem in (
        (missing, "ONNX file does not exist"),
        (garbage, "is not an ONNX model that ONNX Runtime can load"),
        (foreign, "holds no segpipe metadata: export it with `segpipe export --format onnx`"),
    ):
        line = _error_line(capsys, ["predict", "--onnx", str(path), "--input", str(images), "--output", str(out)])
        assert line.startswith(f"segpipe: error: {path}: {problem}")
    assert not out.exists()
