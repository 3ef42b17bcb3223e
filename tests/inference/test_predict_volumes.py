"""``segpipe predict`` on volumes: masks and probabilities on the input's grid, with its header; flip TTA."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from builders import tiny_3d_config
from PIL import Image

from segpipe.cli import main
from segpipe.data import VolumeDataModule
from segpipe.errors import DataError
from segpipe.inference import MaskWriter
from segpipe.inference.tta import flip_combinations, tta_axes
from segpipe.inference.volume_writer import write_volume_prediction
from segpipe.io.volumes import read_volume, write_label, write_volume
from segpipe.tasks import SegmentationTask

SHAPE = (21, 17, 9)
LPS = np.array([[-0.8, 0, 0, 40.0], [0, -0.8, 0, -12.5], [0, 0, 2.5, 7.0], [0, 0, 0, 1]])
# x flipped only (LAS): a negative determinant, so the header's qfac (pixdim[0]) is -1.
LAS = np.array([[-0.8, 0, 0, 10.0], [0, 0.8, 0, -20.0], [0, 0, 2.5, -3.0], [0, 0, 0, 1]])


def oblique_permuted_affine() -> np.ndarray:
    """Voxel axes along roughly (S, L, P), rotated 20 degrees about S; spacing (0.8, 0.8, 2.5)."""
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], float) @ np.diag([0.8, 0.8, 2.5])
    affine[:3, 3] = (-3.0, 11.0, 25.0)
    return affine


def world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    index = np.indices(shape).reshape(3, -1)
    return (affine[:3, :3] @ index + affine[:3, 3:]).reshape(3, *shape)


def centre_of(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World position (3,) of the grid's centre."""
    return affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]


def tissue(affine: np.ndarray, shape: tuple[int, ...], centre: np.ndarray) -> np.ndarray:
    """Labels by world position: 1 inside a ball of 5 mm around ``centre``, 2 where x > centre x + 3.6 mm
    (half-way between two voxel planes of a 0.8 mm grid through the centre)."""
    x, y, z = world(affine, shape) - centre.reshape(3, 1, 1, 1)
    label = np.zeros(shape, np.int64)
    label[x > 3.6] = 2
    label[x**2 + y**2 + z**2 < 25] = 1
    return label


def scan(affine: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An image whose intensity follows :func:`tissue`, zero on the first two x planes (cropped away)."""
    label = tissue(affine, shape, centre_of(affine, shape))
    image = np.choose(label, [100.0, 200.0, 40.0]) + rng.normal(0, 5, shape)
    image[:2] = 0
    return image.astype(np.float32), label


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray, dtype: type = np.int16) -> None:
    """A scanner-like header: int16 with scaling, qform code 1 and sform code 2, mm and seconds."""
    image = nib.Nifti1Image(np.round(array).astype(dtype), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=2)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_slope_inter(1.0, 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)


def one_hot(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(labels), num_classes).permute(3, 0, 1, 2).float()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def assert_same_grid(output: Path, source: Path) -> None:
    """The output's affine, shape and header geometry equal the input's."""
    out, ref = nib.load(output), nib.load(source)
    assert out.shape[:3] == ref.shape[:3]
    np.testing.assert_allclose(out.affine, ref.affine, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out.header["pixdim"][:4], ref.header["pixdim"][:4], rtol=0, atol=1e-6)
    for field in ("qform_code", "sform_code", "xyzt_units"):
        assert out.header[field] == ref.header[field], field


# ---- the writer ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("affine", [LAS, oblique_permuted_affine()], ids=["LAS", "oblique-permuted"])
def test_written_mask_is_on_the_input_grid_with_its_header(tmp_path: Path, affine: np.ndarray):
    image, label = scan(affine, SHAPE, np.random.default_rng(0))
    save_nifti(tmp_path / "in" / "case.nii.gz", image, affine)
    dm = VolumeDataModule(
        root=str(tmp_path), predict_dir=str(tmp_path / "in"), spacing=(0.5, 0.5, 1.25), crop_nonzero=True, num_workers=0
    )
    dm.setup("predict")
    sample = dm.datasets["predict"][0]
    geometry = sample["geometry"]
    assert tuple(geometry["crop_stop"] - geometry["crop_start"]) != tuple(geometry["oriented_shape"])  # cropped
    # A perfect prediction on the preprocessed grid: the tissue labels of its own voxels' positions.
    truth = tissue(geometry["resampled_affine"], tuple(geometry["resampled_shape"]), centre_of(affine, SHAPE))
    written = write_volume_prediction(tmp_path / "out", "case", one_hot(truth, 3), geometry, save_probabilities=True)
    assert written == [tmp_path / "out" / "case.nii.gz", tmp_path / "out" / "case_probabilities.nii.gz"]

    assert_same_grid(written[0], tmp_path / "in" / "case.nii.gz")
    mask = nib.load(written[0])
    assert mask.get_data_dtype() == np.uint8 and mask.header.get_slope_inter() == (None, None)
    labels = np.asanyarray(mask.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2}
    inside = np.s_[2:]  # the cropped-away planes (zero intensity) are background
    assert (labels[:2] == 0).all()
    for k in (1, 2):
        assert dice(labels[inside] == k, label[inside] == k) > 0.9, k
    probabilities = nib.load(written[1])
    assert probabilities.shape == (*SHAPE, 3) and probabilities.get_data_dtype() == np.float32
    np.testing.assert_allclose(probabilities.affine, mask.affine, rtol=0, atol=1e-6)
    p = probabilities.get_fdata()
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(p.argmax(-1), labels)


def test_nrrd_input_gives_a_nifti_with_the_equivalent_affine(tmp_path: Path):
    image, _ = scan(LPS, SHAPE, np.random.default_rng(1))
    write_volume(tmp_path / "case.nii.gz", image, LPS)
    (tmp_path / "in").mkdir()
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "case.nii.gz")), str(tmp_path / "in" / "case.nrrd"))
    dm = VolumeDataModule(root=str(tmp_path), predict_dir=str(tmp_path / "in"), spacing=(1.0, 1.0, 2.0), num_workers=0)
    dm.setup("predict")
    sample = dm.datasets["predict"][0]
    probabilities = torch.softmax(torch.randn(2, *sample["image"].shape[1:]), 0)
    [path] = write_volume_prediction(tmp_path / "out", sample["name"], probabilities, sample["geometry"])
    out = nib.load(path)
    assert path.name == "case.nii.gz" and out.shape == SHAPE
    np.testing.assert_allclose(out.affine, read_volume(tmp_path / "in" / "case.nrrd")[1].affine, atol=1e-5)
    np.testing.assert_allclose(out.affine, LPS, atol=1e-5)
    assert (out.header["qform_code"], out.header["sform_code"]) == (1, 1)
    assert out.header.get_xyzt_units()[0] == "mm"


def test_writing_over_the_input_is_refused(tmp_path: Path):
    image, _ = scan(LPS, SHAPE, np.random.default_rng(2))
    write_volume(tmp_path / "in" / "case.nii.gz", image, LPS)
    dm = VolumeDataModule(root=str(tmp_path), predict_dir=str(tmp_path / "in"), spacing=None, num_workers=0)
    dm.setup("predict")
    sample = dm.datasets["predict"][0]
    before = (tmp_path / "in" / "case.nii.gz").read_bytes()
    with pytest.raises(DataError, match="would overwrite the input volume"):
        write_volume_prediction(tmp_path / "in", "case", torch.ones(2, *SHAPE) / 2, sample["geometry"])
    assert (tmp_path / "in" / "case.nii.gz").read_bytes() == before


def test_2d_writer_keeps_png_masks_and_adds_probabilities(tmp_path: Path):
    probabilities = torch.softmax(torch.randn(2, 3, 13, 11), 1)
    prediction = {"name": ["a", "b"], "probabilities": probabilities, "mask": probabilities.argmax(1)}
    writer = MaskWriter(str(tmp_path), save_probabilities=True)
    writer.write_on_batch_end(None, None, prediction, None, {"image": torch.zeros(2, 1, 13, 11)}, 0)  # type: ignore[arg-type]
    for i, name in enumerate("ab"):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"{name}.png")), prediction["mask"][i].numpy())
        with np.load(tmp_path / f"{name}_probabilities.npz") as saved:
            np.testing.assert_allclose(saved["probabilities"], probabilities[i].numpy())
    assert not list(tmp_path.glob(".*tmp*"))


# ---- flip test-time augmentation -----------------------------------------------------------------------
def test_flip_tta_is_the_mirror_average_and_makes_predictions_flip_invariant():
    torch.manual_seed(0)
    image = torch.randn(1, 1, 16, 12, 8)
    kwargs = {"spatial_dims": 3, "num_classes": 3, "model_kwargs": {"depth": 2, "base_channels": 4}}
    plain = SegmentationTask(**kwargs).eval()
    tta = SegmentationTask(**kwargs, tta=[0, 2]).eval()
    tta.load_state_dict(plain.state_dict())
    assert flip_combinations((0, 2)) == [(), (0,), (2,), (0, 2)]
    with torch.no_grad():
        averaged = tta.predict_probabilities(image)
        manual = torch.stack([plain.predict_probabilities(image.flip(d)).flip(d) for d in ([], [2], [4], [2, 4])]).mean(
            0
        )
        torch.testing.assert_close(averaged, manual)
        torch.testing.assert_close(averaged.sum(1), torch.ones(1, 16, 12, 8))
        # Averaged over the whole mirror group: flipping the input flips the output, exactly.
        for dims in ([2], [4], [2, 4]):
            torch.testing.assert_close(tta.predict_probabilities(image.flip(dims)), averaged.flip(dims))
        # ... which a single pass of this (untrained) network does not do.
        single = plain.predict_probabilities(image)
        assert (plain.predict_probabilities(image.flip([2])) - single.flip([2])).abs().max() > 1e-3
    assert tta_axes(True, 3) == (0, 1, 2) and tta_axes(False, 2) == ()
    with pytest.raises(ValueError, match="tta axes"):
        SegmentationTask(**kwargs, tta=[3])


# ---- segpipe predict through the CLI -------------------------------------------------------------------
def nnunet_dataset(root: Path) -> dict[str, Path]:
    """imagesTr/labelsTr (4 LPS cases) and imagesTs with three inputs whose grids differ from training;
    returns the test inputs by case name."""
    rng = np.random.default_rng(3)
    for i in range(4):
        image, label = scan(LPS, SHAPE, rng)
        write_volume(root / "imagesTr" / f"train{i}_0000.nii.gz", image, LPS)
        write_label(root / "labelsTr" / f"train{i}.nii.gz", label, LPS)
    inputs = {
        "lps": (LPS, SHAPE, root / "imagesTs" / "lps_0000.nii.gz"),
        "oblique": (oblique_permuted_affine(), (19, 23, 11), root / "imagesTs" / "oblique_0000.nii.gz"),
        "las": (LAS, (23, 15, 9), root / "imagesTs" / "las_0000.nii.gz"),
    }
    for affine, shape, path in inputs.values():
        save_nifti(path, scan(affine, shape, rng)[0], affine)
    # An NRRD input too: written as NIfTI with the equivalent affine.
    write_volume(root / "nrrd.nii.gz", scan(LPS, SHAPE, rng)[0], LPS)
    sitk.WriteImage(sitk.ReadImage(str(root / "nrrd.nii.gz")), str(root / "imagesTs" / "nrrd_0000.nrrd"))
    paths = {name: path for name, (_, _, path) in inputs.items()}
    return paths | {"nrrd": root / "imagesTs" / "nrrd_0000.nrrd"}


def tiny_predict_config(root: Path) -> dict:
    """test_volumes' tiny 3D U-Net, 2 training steps, no logger; resampled and cropped volumes."""
    config = tiny_3d_config(root)
    config["trainer"] |= {"max_epochs": 1, "limit_train_batches": 2, "enable_model_summary": False, "logger": False}
    config["model"]["inference_batch_size"] = 2
    config["data"]["init_args"] |= {
        "test_fraction": 0.0,
        "batch_size": 1,
        "cache": False,
        "spacing": [1.0, 1.0, 2.0],
        "crop_nonzero": True,
        "crop_margin": 1,
    }
    return config


@pytest.mark.slow
def test_predict_writes_masks_and_probabilities_on_each_input_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    inputs = nnunet_dataset(tmp_path / "Dataset001")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_predict_config(tmp_path / "Dataset001")))
    assert main(["fit", "--config", str(config)]) == 0
    [checkpoint] = sorted(Path("outputs").rglob("last.ckpt"))

    out = tmp_path / "predictions"
    args = ["predict", "--config", str(config), "--ckpt_path", str(checkpoint), "--model.tta", "true"]
    assert main([*args, "--predict_writer.output_dir", str(out), "--predict_writer.save_probabilities", "true"]) == 0
    names = sorted(inputs)
    expected = sorted([f"{n}.nii.gz" for n in names] + [f"{n}_probabilities.nii.gz" for n in names])
    assert sorted(p.name for p in out.iterdir()) == expected
    for name, source in inputs.items():
        mask = nib.load(out / f"{name}.nii.gz")
        input_affine = read_volume(source)[1].affine
        np.testing.assert_allclose(mask.affine, input_affine, rtol=0, atol=1e-5)
        assert mask.shape == read_volume(source)[0].shape[1:]
        if source.name.endswith(".nii.gz"):
            assert_same_grid(out / f"{name}.nii.gz", source)
        labels = np.asanyarray(mask.dataobj)
        assert mask.get_data_dtype() == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
        probabilities = nib.load(out / f"{name}_probabilities.nii.gz").get_fdata()
        assert probabilities.shape == (*mask.shape, 3)
        np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-4)
        np.testing.assert_array_equal(probabilities.argmax(-1), labels)
