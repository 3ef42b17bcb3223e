"""``segpipe export``: ONNX Runtime and TorchScript outputs equal PyTorch's, metadata, sizes, errors."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from segpipe.cli import main as segpipe_main
from segpipe.export.checkpoint import build_network, load_checkpoint
from segpipe.export.metadata import FORMULAS, normalization_modes
from segpipe.export.torchscript_format import read_torchscript_metadata, torchscript_runner
from segpipe.models import MODELS
from segpipe.tasks import SegmentationTask

# small versions of every architecture family (2D unless the name says 3d)
ARCHITECTURES: dict[str, tuple[str, dict[str, Any], int]] = {
    "unet": ("unet", {"depth": 2, "base_channels": 4}, 2),
    "dense_unet": (
        "dense_unet",
        {"growth_rate": 4, "down_blocks": [2, 2], "bottleneck_layers": 2, "init_features": 8},
        2,
    ),
    "segnet": ("segnet", {"base_channels": 4, "stage_convs": [1, 1, 2]}, 2),
    "fcn8s": ("fcn8s", {"base_channels": 4, "fc_channels": 16, "fc_kernel": 3}, 2),
    "unet3d": ("unet", {"depth": 2, "base_channels": 2}, 3),
}
CLASS_NAMES = ["background", "liver", "tumour"]
TOLERANCE = 1e-4
# sizes other than the traced 64x64: larger and unequal, and odd (below the network's stride multiple)
OTHER_SIZES = {2: [(2, 96, 80), (1, 37, 45)], 3: [(2, 24, 16, 20), (1, 13, 17, 11)]}
TRACE_SIZE = {2: "64x64", 3: "16x16x16"}


@pytest.fixture(autouse=True, scope="module")
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def randomize_(net: nn.Module, seed: int = 0) -> None:
    """Seeded weights of unit gain (so logits are O(1) and not zero, as FCN's zero-initialised scores
    would be) and non-trivial batch-norm statistics, so that parity is not checked on constants."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.modules.conv._ConvNd):
                fan_in = module.weight[0].numel() if not module.transposed else module.weight[:, 0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / fan_in**0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.rand(module.bias.shape, generator=gen) * 0.2 - 0.1)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
                module.bias.copy_(torch.rand(module.bias.shape, generator=gen) * 0.2 - 0.1)
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=gen) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)


def fit_checkpoint(
    path: Path, model: str, model_kwargs: dict[str, Any], spatial_dims: int = 2, **task_kwargs: Any
) -> Path:
    """A checkpoint written by Lightning after one optimiser step (lr 0: the random weights stay)."""
    task = SegmentationTask(
        model=model,
        spatial_dims=spatial_dims,
        in_channels=1,
        num_classes=3,
        model_kwargs=model_kwargs,
        class_names=CLASS_NAMES,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.0),
        **task_kwargs,
    )
    randomize_(task.net)
    size = (16,) * spatial_dims
    gen = torch.Generator().manual_seed(0)
    batches = [{"image": torch.randn(1, *size, generator=gen), "mask": torch.randint(0, 3, size, generator=gen)}]
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=path.parent,
    )
    trainer.fit(task, DataLoader(batches * 2, batch_size=2))
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    unpadded = {"depth": 2, "base_channels": 4, "padded": False}
    return {"unet_unpadded": fit_checkpoint(root / "unpadded.ckpt", "unet", unpadded)} | {
        # the 3D task evaluates by sliding windows, as configs/unet3d.yaml does
        name: fit_checkpoint(
            root / f"{name}.ckpt", model, kwargs, dims, inference_roi=[16, 12, 8] if dims == 3 else None
        )
        for name, (model, kwargs, dims) in ARCHITECTURES.items()
    }


FOLDER_DATA = """\
data:
  class_path: segpipe.data.FolderDataModule
  init_args:
    root: data/train
"""
DATA_CONFIG = (
    FOLDER_DATA
    + """\
    normalization: fixed
    mean: [100.5]
    std: [20.0]
    train_transforms:
      - {name: RandomCrop, height: 48, width: 40}
"""
)


@pytest.fixture(scope="module")
def exported(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """``exported(arch, fmt)`` -> (file, printed lines): ``segpipe export`` run once per pair and kept.

    2D exports read the normalisation and patch size of :data:`DATA_CONFIG` (a FolderDataModule's)."""
    root = tmp_path_factory.mktemp("exports")
    config = root / "train.yaml"
    config.write_text(DATA_CONFIG)
    cache: dict[tuple[str, str], tuple[Path, str]] = {}

    def get(arch: str, fmt: str) -> tuple[Path, str]:
        if (arch, fmt) not in cache:
            out = root / f"{arch}.{fmt}"
            dims = ARCHITECTURES[arch][2]
            args = ["export", "--ckpt", str(checkpoints[arch]), "--format", fmt, "-o", str(out)]
            args += ["--input-size", TRACE_SIZE[dims]] + (["--config", str(config)] if dims == 2 else [])
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):  # through the segpipe command's subcommand routing
                assert segpipe_main(args) == 0
            cache[arch, fmt] = out, printed.getvalue()
        return cache[arch, fmt]

    return get


def reference(ckpt: Path) -> nn.Module:
    return build_network(load_checkpoint(ckpt), ckpt)


def run_onnx(path: Path, image: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": image.numpy()})[0]


def max_diff(got: np.ndarray, net: nn.Module, image: torch.Tensor) -> float:
    with torch.no_grad():
        expected = net(image).numpy()
    assert got.shape == expected.shape
    assert expected.std() > 1e-2  # the comparison is not between constants
    return float(np.abs(got - expected).max())


def sidecar(path: Path) -> dict[str, Any]:
    return json.loads(path.with_name(path.name + ".json").read_text())


def _parity_cases() -> list[Any]:
    """Every architecture in both formats. A dynamo ONNX export costs a few CPU seconds, so the fast set
    (``-m "not slow"``) keeps ONNX for U-Net only, TorchScript for all 2D networks; CI runs them all."""
    cases = []
    for arch, (_, _, dims) in ARCHITECTURES.items():
        for fmt in ("onnx", "torchscript"):
            slow = dims == 3 or (fmt == "onnx" and arch != "unet")
            cases.append(pytest.param(arch, fmt, marks=pytest.mark.slow) if slow else pytest.param(arch, fmt))
    return cases


@pytest.mark.parametrize(("arch", "fmt"), _parity_cases())
def test_export_matches_pytorch_at_other_batch_and_spatial_sizes(
    arch: str, fmt: str, checkpoints: dict[str, Path], exported
):
    out, printed = exported(arch, fmt)
    assert f"wrote {out}" in printed and "checked against PyTorch at 1x1x" in printed
    meta = sidecar(out)
    assert meta["dynamic_batch"] and meta["dynamic_spatial"] and meta["class_names"] == CLASS_NAMES
    assert meta["verification"]["max_abs_diff"] <= TOLERANCE

    net = reference(checkpoints[arch])
    run = (lambda x: run_onnx(out, x)) if fmt == "onnx" else (lambda x: torchscript_runner(out)(x.numpy()))
    gen = torch.Generator().manual_seed(7)
    images = [torch.randn(s[0], 1, *s[1:], generator=gen) for s in OTHER_SIZES[ARCHITECTURES[arch][2]]]
    assert max(max_diff(run(image), net, image) for image in images) <= TOLERANCE


def test_onnx_metadata_inside_and_beside_the_file(exported):
    out, printed = exported("unet", "onnx")
    props = ort.InferenceSession(str(out)).get_modelmeta().custom_metadata_map
    inside = json.loads(props["segpipe"])
    beside = sidecar(out)
    assert inside == {k: v for k, v in beside.items() if k not in ("onnx_opset", "verification")}
    assert beside["onnx_opset"] >= 18
    assert json.loads(props["class_names"]) == CLASS_NAMES
    assert props["in_channels"] == "1" and props["num_classes"] == "3" and props["spatial_dims"] == "2"
    assert json.loads(props["patch_size"]) == [48, 40]  # the training crop of the config
    norm = json.loads(props["normalization"])
    assert norm["mode"] == "fixed" and norm["mean"] == [100.5] and norm["std"] == [20.0]
    assert norm["source"].startswith("config ") and "normalization fixed" in printed
    assert inside["input"]["shape"] == ["batch", 1, "height", "width"]
    assert inside["traced_input_shape"] == [1, 1, 64, 64]
    assert inside["model"] == "unet" and inside["model_kwargs"] == {"depth": 2, "base_channels": 4}
    graph_input = ort.InferenceSession(str(out)).get_inputs()[0]
    assert graph_input.name == "image" and graph_input.shape == ["batch", 1, "height", "width"]


def test_torchscript_metadata_inside_and_beside_the_file(exported):
    out, _ = exported("segnet", "torchscript")
    inside = json.loads(read_torchscript_metadata(out))
    assert inside == {k: v for k, v in sidecar(out).items() if k != "verification"}
    assert inside["class_names"] == CLASS_NAMES and inside["in_channels"] == 1 and inside["num_classes"] == 3
    assert inside["normalization"]["mode"] == "fixed" and inside["patch_size"] == [48, 40]


def test_volume_metadata_ct_window_and_sliding_window(checkpoints: dict[str, Path], tmp_path: Path):
    config = tmp_path / "volumes.yaml"
    config.write_text(
        "data:\n  class_path: segpipe.data.VolumeDataModule\n  init_args:\n    root: data\n    normalization: ct\n"
        "    ct_window: [-1000, 1000]\n    ct_mean: 40.0\n    ct_std: 350.0\n    patch_size: [16, 16, 8]\n"
    )
    out = tmp_path / "unet3d.torchscript.pt"
    args = ["--ckpt", str(checkpoints["unet3d"]), "--format", "torchscript", "-o", str(out), "--no-verify"]
    assert export([*args, "--config", str(config)]) == 0
    meta = sidecar(out)
    norm = meta["normalization"]
    assert norm["mode"] == "ct" and norm["window"] == [-1000.0, 1000.0]
    assert norm["mean"] == [40.0] and norm["std"] == [350.0] and "clip" in norm["formula"]
    assert meta["sliding_window"] == {"roi": [16, 12, 8], "overlap": 0.5, "blending": "gaussian"}
    assert meta["patch_size"] == [16, 16, 8] and meta["patch_size_source"] == f"config {config}"
    assert meta["traced_input_shape"] == [1, 1, 16, 16, 8]
    assert meta["input"]["shape"] == ["batch", 1, "x", "y", "z"] and meta["input"]["layout"] == "B,C,X,Y,Z"
    # no config: the sliding-window size is the patch, and the traced size
    assert export(args) == 0
    meta = sidecar(out)
    assert meta["patch_size"] == [16, 12, 8] and meta["patch_size_source"] == "checkpoint (inference_roi)"
    assert meta["traced_input_shape"] == [1, 1, 16, 12, 8] and meta["normalization"]["mode"] == "zscore"


def test_every_normalisation_mode_of_the_datamodules_is_described():
    for spatial_dims in (2, 3):
        assert set(normalization_modes(spatial_dims)) == set(FORMULAS[spatial_dims])


def with_datamodule_hparams(ckpt: Path, out: Path, **hparams: Any) -> Path:
    """A copy of ``ckpt`` holding ``hparams`` as Lightning's ``datamodule_hyper_parameters``."""
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["datamodule_hyper_parameters"] = hparams
    torch.save(checkpoint, out)
    return out


def test_unknown_normalisation_is_refused(checkpoints: dict[str, Path], tmp_path: Path, capsys):
    # ct is for volumes only: the fit parser refuses it in a 2D DataModule's config...
    config = tmp_path / "bad.yaml"
    config.write_text(FOLDER_DATA + "    normalization: ct\n")
    assert export(["--ckpt", str(checkpoints["unet"]), "--config", str(config), "--no-verify"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"segpipe: error: {config}: ") and "normalization" in line and "'ct'" in line
    # ... and export refuses it in the hyperparameters a DataModule saved in the checkpoint
    ckpt = with_datamodule_hparams(checkpoints["unet"], tmp_path / "ct.ckpt", normalization="ct")
    assert export(["--ckpt", str(ckpt), "--no-verify"]) == 2
    line = _one_error_line(capsys)
    assert "'ct'" in line and "zscore, minmax, fixed, none" in line


def test_config_is_read_with_the_fit_parsers_defaults_and_overrides(checkpoints, tmp_path: Path):
    config = tmp_path / "train.yaml"
    config.write_text(FOLDER_DATA)
    out = tmp_path / "unet.torchscript.pt"
    args = ["--ckpt", str(checkpoints["unet"]), "--format", "torchscript", "-o", str(out), "--no-verify"]
    assert export([*args, "--config", str(config)]) == 0
    norm = sidecar(out)["normalization"]
    assert norm["mode"] == "zscore" and norm["source"] == f"config {config}"  # FolderDataModule's default
    overrides = ["--data.init_args.normalization", "fixed", "--data.init_args.mean", "[3.5]"]
    assert export([*args, "--config", str(config), *overrides, "--data.init_args.std", "[2.0]"]) == 0
    norm = sidecar(out)["normalization"]
    assert norm["mode"] == "fixed" and norm["mean"] == [3.5] and norm["std"] == [2.0]


def test_datamodule_hyperparameters_in_the_checkpoint_come_before_the_config(checkpoints, tmp_path: Path):
    ckpt = with_datamodule_hparams(
        checkpoints["unet"], tmp_path / "saved.ckpt", normalization="fixed", mean=[7.0], std=[4.0], patch_size=None
    )
    config = tmp_path / "train.yaml"
    config.write_text(DATA_CONFIG)
    out = tmp_path / "saved.torchscript.pt"
    args = ["--ckpt", str(ckpt), "--format", "torchscript", "-o", str(out), "--no-verify", "--config", str(config)]
    assert export(args) == 0
    meta = sidecar(out)
    assert meta["normalization"]["source"] == "checkpoint (datamodule hyperparameters)"
    assert meta["normalization"]["mean"] == [7.0] and meta["normalization"]["std"] == [4.0]
    assert meta["patch_size"] == [48, 40] and meta["patch_size_source"] == f"config {config}"


def test_overrides_without_a_config_are_refused(checkpoints: dict[str, Path], capsys):
    assert export(["--ckpt", str(checkpoints["unet"]), "--data.init_args.normalization", "none"]) == 2
    assert "overrides need --config" in _one_error_line(capsys)


def test_default_output_and_normalisation_without_config(checkpoints: dict[str, Path], tmp_path: Path):
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(checkpoints["unet"].read_bytes())
    assert export(["--ckpt", str(ckpt), "--format", "torchscript", "--input-size", "32", "--no-verify"]) == 0
    out = tmp_path / "best.torchscript.pt"
    assert out.exists()
    meta = sidecar(out)
    assert meta["normalization"]["mode"] == "zscore" and meta["normalization"]["mean"] is None
    assert meta["normalization"]["source"] == "default of FolderDataModule"
    assert meta["patch_size"] is None and meta["traced_input_shape"] == [1, 1, 32, 32]
    assert "verification" not in meta


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_unpadded_unet_is_exported_at_a_fixed_size_and_says_so(
    fmt: str, checkpoints: dict[str, Path], tmp_path: Path, capsys
):
    ckpt = checkpoints["unet_unpadded"]
    out = tmp_path / f"valid.{fmt}"
    assert export(["--ckpt", str(ckpt), "--format", fmt, "-o", str(out), "--input-size", "44x36"]) == 0
    printed = capsys.readouterr().out
    assert "spatial size fixed" in printed and "padded=false" in printed
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["dynamic_spatial"] is False and meta["spatial_size"] == [44, 36]
    assert meta["input"]["shape"] == ["batch", 1, 44, 36]
    net = reference(ckpt)
    image = torch.randn(3, 1, 44, 36)  # the batch is still free
    if fmt == "onnx":
        assert max_diff(run_onnx(out, image), net, image) <= TOLERANCE
        with pytest.raises(Exception, match="dimensions"):
            run_onnx(out, torch.randn(1, 1, 40, 40))
    else:
        run = torchscript_runner(out)
        assert max_diff(run(image.numpy()), net, image) <= TOLERANCE
        with pytest.raises(Exception, match=r"spatial size \[44, 36\] only, got \[40, 40\]"):
            run(torch.randn(1, 1, 40, 40).numpy())


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segpipe: error: ")
    return err[0]


def test_missing_checkpoint_is_one_error_line(tmp_path: Path, capsys):
    assert segpipe_main(["export", "--ckpt", str(tmp_path / "nope.ckpt")]) == 2
    assert "checkpoint not found" in _one_error_line(capsys)


def test_unknown_format_names_the_choices(checkpoints: dict[str, Path], capsys):
    assert export(["--ckpt", str(checkpoints["unet"]), "--format", "tflite"]) == 2
    line = _one_error_line(capsys)
    assert "'tflite'" in line and "onnx" in line and "torchscript" in line


def test_bad_input_size_and_missing_config_are_refused(checkpoints: dict[str, Path], tmp_path: Path, capsys):
    assert export(["--ckpt", str(checkpoints["unet"]), "--input-size", "64x0"]) == 2
    assert "--input-size" in _one_error_line(capsys)
    assert export(["--ckpt", str(checkpoints["unet"]), "--config", str(tmp_path / "no.yaml")]) == 2
    assert "no.yaml" in _one_error_line(capsys)


def test_checkpoint_with_pickled_objects_is_refused_not_unpickled(checkpoints: dict[str, Path], tmp_path: Path, capsys):
    checkpoint = torch.load(checkpoints["unet"], weights_only=True)
    checkpoint["hyper_parameters"]["extra"] = Path("somewhere")  # any non-allowlisted class
    bad = tmp_path / "pickled.ckpt"
    torch.save(checkpoint, bad)
    assert export(["--ckpt", str(bad)]) == 2
    line = _one_error_line(capsys)
    assert "weights_only=True" in line and "PosixPath" in line


def test_checkpoint_of_another_task_is_refused(checkpoints: dict[str, Path], tmp_path: Path, capsys):
    checkpoint = torch.load(checkpoints["unet"], weights_only=True)
    checkpoint["hyper_parameters"] = {"encoder": "resnet18", "num_classes": 6}  # e.g. a classifier's
    other = tmp_path / "classifier.ckpt"
    torch.save(checkpoint, other)
    assert export(["--ckpt", str(other)]) == 2
    line = _one_error_line(capsys)
    assert "not a SegmentationTask checkpoint" in line and "encoder, num_classes" in line


def test_non_checkpoint_file_is_refused(tmp_path: Path, capsys):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    assert export(["--ckpt", str(junk)]) == 2
    assert "not a readable torch checkpoint" in _one_error_line(capsys)


def export(args: list[str]) -> int:
    """``segpipe export ARGS`` through the command's one error handler; returns the exit code."""
    return segpipe_main(["export", *args])


class SizeParityNet(nn.Module):
    """A network whose output depends on a Python branch on the input size: tracing freezes it."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if x.shape[-1] % 2 == 0 else -y


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_architecture_that_cannot_export_fails_with_a_clear_message(
    fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    monkeypatch.setitem(MODELS, "size_parity", SizeParityNet)
    task = SegmentationTask(model="size_parity", num_classes=3, class_names=CLASS_NAMES)
    randomize_(task.net)
    ckpt = tmp_path / "parity.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, ckpt)
    out = tmp_path / f"parity.{fmt}"
    assert export(["--ckpt", str(ckpt), "--format", fmt, "-o", str(out), "--input-size", "32"]) == 2
    line = _one_error_line(capsys)
    assert "size_parity" in line and fmt in line
    assert not out.exists()  # nothing half-right is left behind
    # a fixed size is honest for such a network, and then exports
    assert export(["--ckpt", str(ckpt), "--format", fmt, "-o", str(out), "--input-size", "32", "--fixed-size"]) == 0
    assert json.loads(out.with_name(out.name + ".json").read_text())["dynamic_spatial"] is False
