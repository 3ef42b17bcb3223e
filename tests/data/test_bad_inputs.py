"""The bad-input corpus: each broken dataset is refused by `segpipe fit` before training, with one line
naming the file and the problem, exit code 2, no traceback, no output folder and no MLflow run; and
`segpipe check-data` lists the same problem. Datasets that must work (unicode names, empty masks, 16-bit
images, odd sizes, DICOM, case lists) pass the checks and train for one step.

Every file is generated into tmp_path by the builders below (nothing binary is committed).
"""

from __future__ import annotations

import gzip
import re
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
import yaml
from corpus import (
    AFFINE,
    fit_config,
    image_case,
    png_bomb,
    tiff_bomb,
    volume_case,
    write_dicom_series,
    write_images,
    write_json,
    write_nnunet,
    write_volumes,
)
from PIL import Image

from segpipe.cli import main
from segpipe.io.volumes import write_label, write_volume

RNG = np.random.default_rng(7)


@dataclass(frozen=True)
class Bad:
    """A corpus entry: break a fresh ``base`` dataset with ``breaks``; fit must name ``file`` (relative to
    the dataset root) and match ``problem``."""

    id: str
    base: str  # "2d" (PNG folder), "3d" (NIfTI images/labels), "nnunet" (imagesTr/labelsTr + dataset.json)
    breaks: Callable[[Path], object]
    file: str
    problem: str


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    path.unlink()
    write(path)


def _png(array: np.ndarray) -> Callable[[Path], object]:
    return lambda path: Image.fromarray(array).save(path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _dangling(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.with_name("moved-away" + path.suffix))


def _folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _label(mutate: Callable[[np.ndarray], np.ndarray], affine: np.ndarray = AFFINE) -> Callable[[Path], object]:
    def write(path: Path) -> None:
        _, label = volume_case(RNG)
        write_label(path, mutate(label), affine)

    return write


def _volume(mutate: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], object]:
    return lambda path: write_volume(path, mutate(volume_case(RNG)[0]), AFFINE)


def _nifti_header_bomb(root: Path) -> None:
    (root / "images" / "case_05.nii.gz").unlink()
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.float32)
    (root / "images" / "case_05.nii").write_bytes(header.binaryblock + b"\0" * 1004)


def _two_dicom_series(root: Path) -> None:
    (root / "images" / "case_00.nii.gz").unlink()
    folder = root / "images" / "case_00"
    write_dicom_series(folder / "a", np.zeros((13, 11, 3), np.int16), series_uid="1.2.3.1")
    write_dicom_series(folder / "b", np.zeros((13, 11, 4), np.int16), series_uid="1.2.3.2")
    for part in ("a", "b"):
        for path in (folder / part).iterdir():
            path.rename(folder / f"{part}_{path.name}")
        (folder / part).rmdir()


def _edit_json(**changes: object) -> Callable[[Path], object]:
    def edit(root: Path) -> None:
        path = root / "dataset.json"
        content = yaml.safe_load(path.read_text())
        write_json(path, content | changes)

    return edit


def _shifted(dz: float = 0.0, spacing_z: float | None = None) -> np.ndarray:
    affine = AFFINE.copy()
    affine[2, 3] += dz
    if spacing_z is not None:
        affine[2, 2] = spacing_z
    return affine


CORPUS = [
    # ---- 2D: corrupt, truncated, zero-byte, mislabelled, folders and links, bombs --------------------
    Bad(
        "2d-zero-byte-mask",
        "2d",
        lambda r: (r / "masks/case_02.png").write_bytes(b""),
        "masks/case_02.png",
        r"file is empty \(0 bytes\)",
    ),
    Bad(
        "2d-truncated-png",
        "2d",
        lambda r: _truncate(r / "images/case_01.png"),
        "images/case_01.png",
        "cannot be decoded as an image",
    ),
    Bad(
        "2d-png-that-is-nifti",
        "2d",
        lambda r: (r / "images/case_03.png").write_bytes(
            gzip.compress(nib.Nifti1Image(np.zeros((4, 4, 4)), AFFINE).to_bytes())
        ),
        "images/case_03.png",
        "cannot be decoded as an image",
    ),
    Bad(
        "2d-mask-is-a-folder",
        "2d",
        lambda r: _folder(r / "masks/case_04.png"),
        "masks/case_04.png",
        "is a folder, expected an image file",
    ),
    Bad(
        "2d-dangling-link",
        "2d",
        lambda r: _dangling(r / "images/case_05.png"),
        "images/case_05.png",
        r"does not exist \(dangling link\?\)",
    ),
    Bad(
        "2d-png-bomb",
        "2d",
        lambda r: _replace(r / "images/case_00.png", png_bomb),
        "images/case_00.png",
        "decompression bomb",
    ),
    Bad(
        "2d-tiff-bomb",
        "2d",
        lambda r: (r / "masks/case_01.png").unlink() or tiff_bomb(r / "masks/case_01.tif"),
        "masks/case_01.tif",
        "decompression bomb",
    ),
    # ---- 2D: pairing, shapes, labels, channels, intensities, folders ---------------------------------
    Bad(
        "2d-unpaired-image",
        "2d",
        lambda r: Image.fromarray(image_case(RNG)[0]).save(r / "images/extra.png"),
        "images/extra.png",
        "has no mask in",
    ),
    Bad(
        "2d-unpaired-mask",
        "2d",
        lambda r: Image.fromarray(image_case(RNG)[1]).save(r / "masks/extra.png"),
        "masks/extra.png",
        "has no image in",
    ),
    Bad(
        "2d-shape-mismatch",
        "2d",
        lambda r: _replace(r / "masks/case_02.png", _png(np.zeros((37, 31), np.uint8))),
        "masks/case_02.png",
        r"mask shape \(37, 31\) differs from image shape \(37, 33\)",
    ),
    Bad(
        "2d-label-out-of-range",
        "2d",
        lambda r: _replace(r / "masks/case_03.png", _png(np.full((37, 33), 5, np.uint8))),
        "masks/case_03.png",
        r"labels \[5\] are outside the 3 classes 0\.\.2",
    ),
    Bad(
        "2d-non-integer-mask",
        "2d",
        lambda r: (
            (r / "masks/case_03.png").unlink()
            or tifffile.imwrite(r / "masks/case_03.tif", np.full((37, 33), 0.5, np.float32))
        ),
        "masks/case_03.tif",
        "non-integer values",
    ),
    Bad(
        "2d-rgb-mask",
        "2d",
        lambda r: _replace(r / "masks/case_04.png", _png(np.zeros((37, 33, 3), np.uint8))),
        "masks/case_04.png",
        r"single-channel label image, got shape \(37, 33, 3\) \(an RGB mask\?\)",
    ),
    Bad(
        "2d-rgb-image-for-a-gray-model",
        "2d",
        lambda r: _replace(r / "images/case_05.png", _png(np.zeros((37, 33, 3), np.uint8))),
        "images/case_05.png",
        "has 3 channels, the model expects 1",
    ),
    Bad(
        "2d-nan-intensities",
        "2d",
        lambda r: (
            (r / "images/case_04.png").unlink()
            or tifffile.imwrite(r / "images/case_04.tif", np.full((37, 33), np.nan, np.float32))
        ),
        "images/case_04.tif",
        "NaN or Inf",
    ),
    Bad(
        "2d-empty-images-folder",
        "2d",
        lambda r: [p.unlink() for p in (r / "images").iterdir()],
        "images",
        r"holds no images \(.*\) \(and \d+ more problems",
    ),
    Bad("2d-missing-dataset-folder", "2d", lambda r: shutil.rmtree(r), "", "dataset folder does not exist"),
    Bad("2d-missing-masks-folder", "2d", lambda r: shutil.rmtree(r / "masks"), "masks", "folder does not exist"),
    # ---- 3D: corrupt files -----------------------------------------------------------------------------
    Bad(
        "3d-truncated-gzip",
        "3d",
        lambda r: _truncate(r / "labels/case_01.nii.gz"),
        "labels/case_01.nii.gz",
        r"cannot be read as a \.nii\.gz volume: truncated \(the gzip stream ends early\)",
    ),
    Bad(
        "3d-nii-gz-that-is-text",
        "3d",
        lambda r: (r / "images/case_02.nii.gz").write_text("id,age\n1,40\n"),
        "images/case_02.nii.gz",
        "not gzip-compressed, although it is named .nii.gz",
    ),
    Bad(
        "3d-zero-byte-image",
        "3d",
        lambda r: (r / "images/case_00.nii.gz").write_bytes(b""),
        "images/case_00.nii.gz",
        r"file is empty \(0 bytes\)",
    ),
    Bad(
        "3d-label-is-a-folder",
        "3d",
        lambda r: _folder(r / "labels/case_03.nii.gz"),
        "labels/case_03.nii.gz",
        r"is a folder, expected a \.nii\.gz file",
    ),
    Bad(
        "3d-dangling-link",
        "3d",
        lambda r: _dangling(r / "images/case_04.nii.gz"),
        "images/case_04.nii.gz",
        r"does not exist \(dangling link\?\)",
    ),
    Bad(
        "3d-nifti-header-bomb",
        "3d",
        _nifti_header_bomb,
        "images/case_05.nii",
        r"header claims shape \(2000, 2000, 2000\)",
    ),
    Bad("3d-two-dicom-series-in-one-folder", "3d", _two_dicom_series, "images/case_00", "holds 2 DICOM series"),
    # ---- 3D: 4D where 3D is expected, geometry, labels, intensities ----------------------------------
    Bad(
        "3d-4d-image",
        "3d",
        lambda r: _replace(
            r / "images/case_01.nii.gz",
            lambda p: nib.save(nib.Nifti1Image(np.zeros((13, 11, 9, 5), np.float32), AFFINE), p),
        ),
        "images/case_01.nii.gz",
        r"has 5 channels \(a 4D file of shape \(5, 13, 11, 9\)\), the model expects 1",
    ),
    Bad(
        "3d-4d-label",
        "3d",
        lambda r: _replace(
            r / "labels/case_02.nii.gz",
            lambda p: nib.save(nib.Nifti1Image(np.zeros((13, 11, 9, 2), np.uint8), AFFINE), p),
        ),
        "labels/case_02.nii.gz",
        r"a label volume must be 3D \(X, Y, Z\) with one channel",
    ),
    Bad(
        "3d-shape-mismatch",
        "3d",
        lambda r: _replace(r / "labels/case_01.nii.gz", _label(lambda x: x[:, :, :-1])),
        "labels/case_01.nii.gz",
        r"label shape \(13, 11, 8\) differs from image shape \(13, 11, 9\)",
    ),
    Bad(
        "3d-spacing-mismatch",
        "3d",
        lambda r: _replace(r / "labels/case_03.nii.gz", _label(lambda x: x, _shifted(spacing_z=3.0))),
        "labels/case_03.nii.gz",
        r"label affine differs from image case_03\.nii\.gz \(spacing \(0\.8, 1\.2, 3\.0\) vs \(0\.8, 1\.2, 2\.5\)",
    ),
    Bad(
        "3d-origin-mismatch",
        "3d",
        lambda r: _replace(r / "labels/case_04.nii.gz", _label(lambda x: x, _shifted(dz=5.0))),
        "labels/case_04.nii.gz",
        r"origin \(40\.0, -12\.5, 12\.0\) vs \(40\.0, -12\.5, 7\.0\)",
    ),
    Bad(
        "3d-label-out-of-range",
        "3d",
        lambda r: _replace(r / "labels/case_02.nii.gz", _label(lambda x: np.where(x == 2, 9, x))),
        "labels/case_02.nii.gz",
        r"labels \[9\] are outside the 3 classes 0\.\.2",
    ),
    Bad(
        "3d-non-integer-label",
        "3d",
        lambda r: _replace(r / "labels/case_05.nii.gz", _volume(lambda x: x / 1000)),
        "labels/case_05.nii.gz",
        "label volume holds non-integer values",
    ),
    Bad(
        "3d-nan-intensities",
        "3d",
        lambda r: _replace(r / "images/case_03.nii.gz", _volume(lambda x: np.where(x > 150, np.nan, x))),
        "images/case_03.nii.gz",
        "volume contains NaN or Inf values",
    ),
    Bad(
        "3d-unpaired-label",
        "3d",
        lambda r: shutil.copy(r / "labels/case_00.nii.gz", r / "labels/extra.nii.gz"),
        "labels/extra.nii.gz",
        "has no image in",
    ),
    Bad(
        "3d-empty-images-folder",
        "3d",
        lambda r: [p.unlink() for p in (r / "images").iterdir()],
        "images",
        "holds no volumes",
    ),
    # ---- nnU-Net: dataset.json and channel files -------------------------------------------------------
    Bad(
        "nnunet-dataset-json-not-json",
        "nnunet",
        lambda r: (r / "dataset.json").write_text("{oops"),
        "dataset.json",
        "is not valid JSON",
    ),
    Bad(
        "nnunet-numtraining-disagrees",
        "nnunet",
        _edit_json(numTraining=9),
        "dataset.json",
        "numTraining is 9, but 6 images found",
    ),
    Bad(
        "nnunet-labels-disagree-with-model",
        "nnunet",
        _edit_json(labels={"background": 0, "a": 1, "b": 2, "c": 3}),
        "dataset.json",
        "declares 4 labels, the model has num_classes=3",
    ),
    Bad(
        "nnunet-file-ending-disagrees",
        "nnunet",
        _edit_json(file_ending=".nrrd"),
        "imagesTr/case_000_0000.nii.gz",
        r"does not end in \.nrrd, the file_ending of dataset\.json",
    ),
    Bad(
        "nnunet-channel-gap",
        "nnunet",
        lambda r: (r / "imagesTr/case_002_0000.nii.gz").rename(r / "imagesTr/case_002_0001.nii.gz"),
        "imagesTr/case_002_0001.nii.gz",
        r"case 'case_002' has channels \[1\], expected 0\.\.0",
    ),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow store for the module: creating a SQLite store costs seconds, so the refusals share it
    (and each must leave it without runs)."""
    return tmp_path_factory.mktemp("mlflow") / "mlflow.db"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def write_config(workdir: Path, config: dict, store: Path) -> Path:
    config["trainer"]["logger"]["init_args"]["tracking_uri"] = f"sqlite:///{store}"
    path = workdir / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def build(base: str, root: Path) -> Path:
    if base == "2d":
        return write_images(root, n=6)
    if base == "3d":
        return write_volumes(root, n=6)
    return write_nnunet(root, n=6)


def mlflow_runs(store: Path) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(store) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0


def test_the_corpus_is_large_and_covers_2d_and_3d():
    assert len(CORPUS) >= 20 and len({b.id for b in CORPUS}) == len(CORPUS)
    assert {b.base for b in CORPUS} == {"2d", "3d", "nnunet"}


@pytest.mark.parametrize("bad", CORPUS, ids=[b.id for b in CORPUS])
def test_fit_refuses_bad_input_before_training(workdir: Path, store: Path, bad: Bad, capsys: pytest.CaptureFixture):
    root = build(bad.base, workdir / "data")
    bad.breaks(root)
    config = write_config(workdir, fit_config(root, dims=2 if bad.base == "2d" else 3), store)

    assert main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("segpipe: error:")]
    assert len(errors) == 1, err
    named = str(root / bad.file) if bad.file else str(root)
    assert errors[0].startswith(f"segpipe: error: {named}: "), errors[0]
    assert re.search(bad.problem, errors[0]), errors[0]
    assert "Traceback" not in err
    assert not (workdir / "outputs").exists() or not any((workdir / "outputs").iterdir())
    assert mlflow_runs(store) == 0

    # check-data on the bare folder finds the same problem (and exits 2)
    assert main(["check-data", str(root), "--num-classes", "3", "--in-channels", "1"]) == 2
    out = capsys.readouterr()
    first = re.sub(r" \(and \d+ more problems.*\)$", "", errors[0].removeprefix(f"segpipe: error: {named}: "))
    assert named in out.out + out.err and first in " ".join((out.out + out.err).split()), out


# ---- datasets that must work -------------------------------------------------------------------------
def write_good_2d(root: Path) -> Path:
    """Unicode and spaces in names, an all-background mask, 16-bit PNG and TIFF images, odd sizes."""
    write_images(root, n=2)
    image, mask = image_case(RNG, 37, 33)
    Image.fromarray(image).save(root / "images" / "Fall 01 - Müller.png")
    Image.fromarray(mask).save(root / "masks" / "Fall 01 - Müller.png")
    image, mask = image_case(RNG, 37, 33)
    Image.fromarray(image).save(root / "images" / "病例 2.png")
    Image.fromarray(np.zeros_like(mask)).save(root / "masks" / "病例 2.png")  # all background
    image, mask = image_case(RNG, 29, 41)  # another odd size
    Image.fromarray(image.astype(np.uint16) * 257).save(root / "images" / "sixteen_bit.png")
    Image.fromarray(mask).save(root / "masks" / "sixteen_bit.png")
    image, mask = image_case(RNG, 37, 33)
    tifffile.imwrite(root / "images" / "sixteen_bit_tiff.tif", image.astype(np.uint16) * 200)
    Image.fromarray(mask).save(root / "masks" / "sixteen_bit_tiff.png")
    return root


def write_good_3d(root: Path) -> Path:
    """Unicode and spaces in names, an all-background label, int16 and MHA volumes, odd shapes, a DICOM case."""
    write_volumes(root, n=2, names=["Fall 01 - Müller", "病例 2"])
    write_label(root / "labels" / "病例 2.nii.gz", np.zeros((13, 11, 9), np.uint8), AFFINE)
    image, label = volume_case(RNG, (15, 9, 11))
    write_volume(root / "images" / "int16.nii.gz", image, AFFINE)
    nib.save(nib.Nifti1Image(np.round(image).astype(np.int16), AFFINE), root / "images" / "int16.nii.gz")
    write_label(root / "labels" / "int16.nii.gz", label, AFFINE)
    image, label = volume_case(RNG)
    write_volume(root / "mha.nii.gz", image, AFFINE)
    sitk.WriteImage(sitk.ReadImage(str(root / "mha.nii.gz")), str(root / "images" / "mha.mha"))
    (root / "mha.nii.gz").unlink()
    write_label(root / "labels" / "mha.nii.gz", label, AFFINE)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ AFFINE
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image, label = volume_case(RNG)
    direction = tuple((lps[:3, :3] / spacing).ravel())
    write_dicom_series(root / "images" / "dicom case", image, tuple(spacing), tuple(lps[:3, 3]), direction)
    write_label(root / "labels" / "dicom case.nii.gz", label, AFFINE)
    return root


def write_good_list(root: Path) -> Path:
    """A CSV case list with two channel columns, relative paths and spaces."""
    rng = np.random.default_rng(3)
    lines = ["image_0000,image_0001,label"]
    for i in range(5):
        image, label = volume_case(rng)
        write_volume(root / "scans" / f"p {i}_t1.nii.gz", image, AFFINE)
        write_volume(root / "scans" / f"p {i}_t2.nii.gz", -image, AFFINE)
        write_label(root / "seg" / f"p {i}.nii.gz", label, AFFINE)
        lines.append(f"scans/p {i}_t1.nii.gz,scans/p {i}_t2.nii.gz,seg/p {i}.nii.gz")
    (root / "cases.csv").write_text("\n".join(lines) + "\n")
    return root / "cases.csv"


GOOD = {
    "2d-names-empty-masks-16bit-odd-sizes": write_good_2d,
    "3d-names-int16-mha-dicom": write_good_3d,
    "3d-case-list-two-channels": write_good_list,
}


@pytest.mark.parametrize("name", list(GOOD))
def test_good_inputs_pass_check_data(tmp_path: Path, name: str, capsys: pytest.CaptureFixture):
    target = GOOD[name](tmp_path / "data")
    channels = "2" if "two-channels" in name else "1"
    assert main(["check-data", str(target), "--num-classes", "3", "--in-channels", channels]) == 0
    out = capsys.readouterr().out
    assert "no problems" in out and "0, 1, 2" in out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(GOOD))
def test_good_inputs_train_for_one_step(workdir: Path, name: str):
    target = GOOD[name](workdir / "data")
    config = fit_config(target, dims=2 if name.startswith("2d") else 3, batch_size=1)
    if "two-channels" in name:
        config["model"]["in_channels"] = 2
    config = write_config(workdir, config, workdir / "mlflow.db")
    args = ["fit", "--config", str(config), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"]
    assert main([*args, "--trainer.limit_val_batches", "1"]) == 0
    assert any(p.name == "last.ckpt" for p in (workdir / "outputs").rglob("*.ckpt"))
    assert mlflow_runs(workdir / "mlflow.db") == 1
