"""Builders of tiny, seeded test data and configs shared by the test folders (no downloads)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import yaml
from PIL import Image

from segpipe.io.volumes import write_label, write_volume


def ddp_config(data_root: Path, experiment: str) -> dict:
    return {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 2,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "default_root_dir": "outputs",
            "logger": {"class_path": "segpipe.tracking.MLflowLogger", "init_args": {"experiment_name": experiment}},
        },
        "model": {
            "model": "unet",
            "in_channels": 1,
            "num_classes": 3,
            "model_kwargs": {"depth": 2, "base_channels": 4, "norm": "group"},
            # Cross-entropy and group norm are means of per-case terms: a mean over 2 ranks' batches of 2
            # equals the mean over one batch of 4 (batch-wise Dice and batch norm are not).
            "loss": "ce",
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}},
        },
        "data": {
            "class_path": "segpipe.data.FolderDataModule",
            "init_args": {"root": str(data_root), "batch_size": 2, "eval_batch_size": 1, "num_workers": 0},
        },
    }


def launch_env(workdir: Path) -> dict[str, str]:
    # The processes meet on this machine whatever the environment says (a cluster's MASTER_ADDR, or one
    # an earlier test's SLURMEnvironment exported).
    inherited = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    return {
        **inherited,
        "MASTER_ADDR": "127.0.0.1",
        "OMP_NUM_THREADS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
        "PYTHONPATH": os.pathsep.join([str(workdir), os.environ.get("PYTHONPATH", "")]),
        "PREPARE_LOG": str(workdir / "prepare.log"),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def runs(workdir: Path, experiment: str) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


SHAPE = (24, 20, 16)


AFFINE = np.array(
    [
        [0.0, -1.2, 0.0, 40.0],
        [0.8, 0.0, 0.0, -12.5],
        [0.0, 0.0, 2.5, 7.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def blob_case(rng: np.random.Generator, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A noisy (X, Y, Z) volume with a bright ball (class 1) and a dark cube (class 2)."""
    grid = np.indices(shape)
    centre = [rng.integers(s // 3, 2 * s // 3) for s in shape]
    ball = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) < 4**2
    label = np.zeros(shape, np.uint8)
    label[ball] = 1
    x, y, z = (rng.integers(0, s - 4) for s in shape)
    label[x : x + 4, y : y + 4, z : z + 4] = 2
    image = np.where(label == 1, 200.0, np.where(label == 2, 30.0, 100.0)) + rng.normal(0, 10, shape)
    return image.astype(np.float32), label


def write_volumes(root: Path, n: int, seed: int = 0, labels_dir: str = "labels") -> Path:
    """``images_labels`` layout: ``root/images/case_XX.nii.gz`` and ``root/<labels_dir>/case_XX.nii.gz``."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, label = blob_case(rng)
        write_volume(root / "images" / f"case_{i:02d}.nii.gz", image, AFFINE)
        write_label(root / labels_dir / f"case_{i:02d}.nii.gz", label, AFFINE)
    return root


def tiny_3d_config(data_root: Path) -> dict:
    return {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 2,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "log_every_n_steps": 1,
            "default_root_dir": "outputs",
            "logger": {
                "class_path": "segpipe.tracking.MLflowLogger",
                "init_args": {"experiment_name": "tests3d", "tracking_uri": "sqlite:///mlflow.db"},
            },
        },
        "model": {
            "model": "unet",
            "spatial_dims": 3,
            "in_channels": 1,
            "num_classes": 3,
            "model_kwargs": {"depth": 2, "base_channels": 4},
            "inference_roi": [16, 16, 8],
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}},
        },
        "data": {
            "class_path": "segpipe.data.VolumeDataModule",
            "init_args": {
                "root": str(data_root),
                "val_fraction": 0.25,
                "test_fraction": 0.25,
                "patch_size": [16, 16, 8],
                "samples_per_volume": 2,
                "batch_size": 2,
                "num_workers": 0,
                "cache": True,
            },
        },
    }


def tiny_config(data_root: Path, **overrides: object) -> dict:
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 3,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "log_every_n_steps": 1,
            "default_root_dir": "outputs",
            "logger": {
                "class_path": "segpipe.tracking.MLflowLogger",
                "init_args": {"experiment_name": "tests", "tracking_uri": "sqlite:///mlflow.db"},
            },
        },
        "model": {
            "model": "unet",
            "in_channels": 1,
            "num_classes": 3,
            "model_kwargs": {"depth": 2, "base_channels": 4},
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}},
        },
        "data": {
            "class_path": "segpipe.data.FolderDataModule",
            "init_args": {
                "root": str(data_root),
                "batch_size": 4,
                "num_workers": 0,
                "val_fraction": 0.25,
                "test_fraction": 0.25,
            },
        },
    }
    config.update(overrides)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def disc_case(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with a bright disc (class 1) and a dark square (class 2)."""
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.integers(height // 4, 3 * height // 4), rng.integers(width // 4, 3 * width // 4)
    r = rng.integers(min(height, width) // 8, min(height, width) // 4)
    mask = np.zeros((height, width), np.uint8)
    mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 1
    sy, sx = rng.integers(0, height - 6), rng.integers(0, width - 6)
    mask[sy : sy + 6, sx : sx + 6] = 2
    image = np.full((height, width), 100.0)
    image[mask == 1] = 200
    image[mask == 2] = 30
    image += rng.normal(0, 10, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_dataset(root: Path, n: int, height: int = 37, width: int = 33, seed: int = 0) -> Path:
    """Flat layout: ``root/images/case_XX.png`` and ``root/masks/case_XX.png``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, mask = disc_case(rng, height, width)
        Image.fromarray(image).save(root / "images" / f"case_{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"case_{i:02d}.png")
    return root


def write_classes(root: Path, per_class: int = 6, size: tuple[int, int] = (33, 37)) -> Path:
    """Two classes: dark and bright noisy images."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("dark", "bright")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = np.clip(rng.normal(60 + 120 * label, 15, size), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / name / f"img_{i}.png")
    return root


def loader_epoch(loader, number: int, state: dict | None = None) -> list[dict]:
    """One pass of a resumable training loader in Lightning's order: the loader state, the iterator,
    then ``set_epoch``, then the batches."""
    if state is not None:
        loader.load_state_dict(state)
    batches = iter(loader)
    loader.sampler.set_epoch(number)
    return list(batches)


def same_batches(a: list[dict], b: list[dict]) -> bool:
    """Whether two lists of batches hold the same names, and bit-identical images and masks."""
    import torch  # here, not at the top: conftest sets the thread count before torch is imported

    return [x["name"] for x in a] == [x["name"] for x in b] and all(
        torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"]) for x, y in zip(a, b, strict=True)
    )


def wait_for_mlflow(uri: str, proc: subprocess.Popen, timeout: float = 180, log: Path | None = None) -> None:
    """Wait until the ``mlflow server`` ``proc`` at ``uri`` answers ``/health``.

    Raises:
        RuntimeError: the server exited or did not answer within ``timeout`` s (with ``log``'s text if given).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                output = f":\n{log.read_text()}" if log is not None else ""
                raise RuntimeError(f"mlflow server did not start (exit code {proc.poll()}){output}") from None
            time.sleep(0.5)


def write_dicom_series(folder: Path, volume: np.ndarray, affine: np.ndarray, seed: int = 0) -> list[Path]:
    """A CT-like DICOM series of ``volume`` (X, Y, Z) on the RAS+ ``affine`` (4, 4): one file per z slice
    (rows along y, columns along x), named in a shuffled order so that readers must sort by position.

    Returns:
        The files, in slice order (z = 0 first).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    directions = lps[:3, :3] / spacing
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    names = np.random.default_rng(seed).permutation(volume.shape[2])
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "P001", "19700101", "O"
        ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "1", "20260101", "120000", "A1"
        ds.ReferringPhysicianName, ds.Modality, ds.Manufacturer = "", "CT", "tests"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageOrientationPatient = [float(v) for v in (*directions[:, 0], *directions[:, 1])]
        ds.ImagePositionPatient = [float(v) for v in lps[:3, :3] @ np.array([0, 0, k]) + lps[:3, 3]]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # between rows (y), between columns (x)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T, dtype=np.int16).tobytes()
        path = folder / f"slice_{names[k]:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def seg_frames(seg, source, segments: int) -> np.ndarray:
    """(rows, columns, segments) of a highdicom Segmentation ``seg`` for the pydicom instance ``source``
    (segments 1..``segments``; zeros where the SEG has no frame)."""
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID],
        segment_numbers=list(range(1, segments + 1)),
        assert_missing_frames_are_empty=True,
    )
    return pixels[0]


def seg_labels_volume(seg_path: Path, series: Path, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A DICOM-SEG file re-imported as (X, Y, Z) labels (segment k = class k) on the grid of the RAS+
    ``affine`` (4, 4): each instance of the ``series`` folder's frame placed at the slice its
    ImagePositionPatient falls on (independent of the file order and of the reader's slice sorting)."""
    import highdicom as hd
    import pydicom

    seg = hd.seg.segread(seg_path)
    segments = len(seg.SegmentSequence)
    volume = np.full(shape, -1, np.int64)
    to_voxel = np.linalg.inv(affine)
    for path in sorted(series.iterdir()):
        source = pydicom.dcmread(path)
        ras = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(source.ImagePositionPatient, np.float64)
        i, j, k = np.round(to_voxel[:3, :3] @ ras + to_voxel[:3, 3]).astype(int)
        assert (i, j) == (0, 0), f"{path.name} is not on a slice of the grid"
        volume[:, :, k] = (seg_frames(seg, source, segments) * np.arange(1, segments + 1)).sum(-1).T
    assert (volume >= 0).all(), "a slice has no source instance"
    return volume


@dataclass(frozen=True)
class FingerprintStandIn:
    """What a plan needs of a dataset fingerprint (``to_dict``; the symmetry and dimensionality that the
    augmentation is planned from), for plans built from a written 2D config."""

    summary: dict
    mirror_symmetry: tuple[float, ...] = (1.0, 1.0)
    spatial_dims: int = 2
    anisotropy: float = 1.0

    def to_dict(self) -> dict:
        return dict(self.summary)


@dataclass(frozen=True)
class PlanStandIn:
    """An experiment plan (config, reasons, fingerprint) as ``segpipe.planning.planner.ExperimentPlan`` holds it."""

    config: dict
    reasons: dict
    fingerprint: FingerprintStandIn


def plan_of(config: dict, reasons: dict | None = None, fingerprint: dict | None = None) -> PlanStandIn:
    """A plan of an existing ``config``, with a small fingerprint summary."""
    summary = fingerprint or {"cases": 16, "median_shape": [37, 33], "modality": "image"}
    return PlanStandIn(config, dict(reasons or {}), FingerprintStandIn(summary))
