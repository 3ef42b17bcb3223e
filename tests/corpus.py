"""Writers for small generated datasets and bad files (nothing binary is committed): 2D and 3D datasets,
DICOM series, dataset.json files, decompression bombs, and segpipe fit configs over them."""

from __future__ import annotations

import json
import locale
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

from segpipe.io.volumes import write_label, write_volume

SHAPE = (13, 11, 9)  # odd sizes, small enough that a case reads in a millisecond
AFFINE = np.array(
    [
        [0.0, -1.2, 0.0, 40.0],
        [0.8, 0.0, 0.0, -12.5],
        [0.0, 0.0, 2.5, 7.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


# ---- 2D ----------------------------------------------------------------------------------------------
def image_case(rng: np.random.Generator, height: int = 37, width: int = 33) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 (H, W) image and a mask with classes 0, 1 (disc) and 2 (square)."""
    yy, xx = np.mgrid[:height, :width]
    mask = np.zeros((height, width), np.uint8)
    mask[(yy - height // 2) ** 2 + (xx - width // 2) ** 2 < (min(height, width) // 4) ** 2] = 1
    sy, sx = rng.integers(0, height - 5), rng.integers(0, width - 5)
    mask[sy : sy + 5, sx : sx + 5] = 2
    image = np.where(mask == 1, 200.0, np.where(mask == 2, 30.0, 100.0)) + rng.normal(0, 10, mask.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_images(root: Path, n: int = 6, seed: int = 0, names: list[str] | None = None) -> Path:
    """Flat 2D layout ``root/images/<name>.png`` + ``root/masks/<name>.png``."""
    rng = np.random.default_rng(seed)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name in names or [f"case_{i:02d}" for i in range(n)]:
        image, mask = image_case(rng)
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return root


def png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A 100-byte PNG whose header claims ``width`` x ``height`` 8-bit pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def tiff_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A tiny deflate-compressed TIFF whose header claims ``width`` x ``height`` 8-bit pixels."""
    data = zlib.compress(b"\0" * 64)
    tags = [  # (tag, type, count, value): type 3 SHORT, 4 LONG
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 8),  # deflate
        (262, 3, 1, 1),
        (273, 4, 1, 0),  # strip offset, set below
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, len(data)),
    ]
    ifd_size = 2 + 12 * len(tags) + 4
    offset = 8 + ifd_size
    tags[5] = (273, 4, 1, offset)
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        ifd += struct.pack("<HHI", tag, kind, count) + (
            struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        )
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + data)
    return path


# ---- 3D ----------------------------------------------------------------------------------------------
def volume_case(rng: np.random.Generator, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A float32 (X, Y, Z) volume and a uint8 label with classes 0, 1 (ball) and 2 (cube)."""
    grid = np.indices(shape)
    ball = sum((g - s // 2) ** 2 for g, s in zip(grid, shape, strict=True)) < 3**2
    label = np.zeros(shape, np.uint8)
    label[ball] = 1
    x, y, z = (int(rng.integers(0, s - 3)) for s in shape)
    label[x : x + 3, y : y + 3, z : z + 3] = 2
    image = np.where(label == 1, 200.0, np.where(label == 2, 30.0, 100.0)) + rng.normal(0, 10, shape)
    return image.astype(np.float32), label


def write_volumes(root: Path, n: int = 6, seed: int = 0, names: list[str] | None = None) -> Path:
    """``images_labels`` layout: ``root/images/<name>.nii.gz`` + ``root/labels/<name>.nii.gz``."""
    rng = np.random.default_rng(seed)
    for name in names or [f"case_{i:02d}" for i in range(n)]:
        image, label = volume_case(rng)
        write_volume(root / "images" / f"{name}.nii.gz", image, AFFINE)
        write_label(root / "labels" / f"{name}.nii.gz", label, AFFINE)
    return root


def write_nnunet(root: Path, n: int = 6, channels: int = 1, seed: int = 0, dataset_json: bool = True) -> Path:
    """nnU-Net v2 raw layout: ``imagesTr/<case>_000C.nii.gz``, ``labelsTr/<case>.nii.gz``, ``dataset.json``."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, label = volume_case(rng)
        for c in range(channels):
            write_volume(root / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz", image * (c + 1), AFFINE)
        write_label(root / "labelsTr" / f"case_{i:03d}.nii.gz", label, AFFINE)
    if dataset_json:
        write_json(
            root / "dataset.json",
            {
                "channel_names": {str(c): f"mod{c}" for c in range(channels)},
                "labels": {"background": 0, "ball": 1, "cube": 2},
                "numTraining": n,
                "file_ending": ".nii.gz",
            },
        )
    return root


def write_json(path: Path, content: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1))
    return path


def write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    spacing: tuple[float, float, float] = (0.7, 0.9, 2.5),
    origin: tuple[float, float, float] = (10.0, -20.0, 30.0),
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    series_uid: str = "1.2.826.0.1.3680043.2.1125.1",
) -> Path:
    """Write an (X, Y, Z) int16 volume as one DICOM file per slice with SimpleITK (LPS geometry as given)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.transpose(2, 1, 0)).astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = direction
    saved = locale.setlocale(locale.LC_ALL)  # GDCM's writer resets the C locale (ASCII text I/O afterwards)
    try:
        _write_slices(folder, image, writer, d, spacing[2], series_uid)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    return folder


def _write_slices(
    folder: Path, image: sitk.Image, writer: sitk.ImageFileWriter, d: tuple[float, ...], thickness: float, uid: str
) -> None:
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        tags = {
            "0020|000d": "1.2.826.0.1.3680043.2.1125.9",  # study
            "0020|000e": uid,
            "0008|0060": "CT",
            "0020|0037": "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7]))),  # row, column cosines
            "0020|0032": "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))),
            "0020|0013": str(k + 1),
            "0018|0050": str(thickness),
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(slice_)


# ---- configs -----------------------------------------------------------------------------------------
def fit_config(data_root: Path, dims: int = 2, **data_args: object) -> dict:
    """A tiny ``segpipe fit`` config (U-Net depth 2, CPU, MLflow in ./mlflow.db) over ``data_root``."""
    data: dict = {"root": str(data_root), "num_workers": 0, "val_fraction": 0.34, **data_args}
    model: dict = {
        "model": "unet",
        "in_channels": 1,
        "num_classes": 3,
        "model_kwargs": {"depth": 2, "base_channels": 4},
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}},
    }
    if dims == 3:
        model |= {"spatial_dims": 3, "inference_roi": [8, 8, 8]}
        data = {"patch_size": [8, 8, 8], "samples_per_volume": 1, "batch_size": 2, **data}
        class_path = "segpipe.data.VolumeDataModule"
    else:
        data = {"batch_size": 2, **data}
        class_path = "segpipe.data.FolderDataModule"
    return {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "default_root_dir": "outputs",
            "logger": {
                "class_path": "segpipe.tracking.MLflowLogger",
                "init_args": {"experiment_name": "corpus", "tracking_uri": "sqlite:///mlflow.db"},
            },
        },
        "model": model,
        "data": {"class_path": class_path, "init_args": data},
    }
