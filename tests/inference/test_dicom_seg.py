"""DICOM-SEG output for DICOM series inputs: segments, references, frame order, equality with the NIfTI mask."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from builders import seg_frames, seg_labels_volume, write_dicom_series
from pydicom.uid import SegmentationStorage

from segpipe.data import VolumeDataModule
from segpipe.errors import DataError, SegpipeError
from segpipe.inference import MaskWriter
from segpipe.inference.dicom_seg import write_dicom_seg
from segpipe.io.volumes import write_volume

SHAPE = (17, 14, 6)
CLASSES = ["background", "liver", "tumour"]
# Image intensity = 100 * class + 50, so that each source slice carries its own expected segmentation.
STEP, OFFSET = 100, 50
# Axial: columns right to left, rows front to back (the LPS+ axes), slices stacked towards the head.
AXIAL = np.array([[-0.7, 0, 0, 5.0], [0, -0.9, 0, -8.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
# Coronal and oblique: columns along R->L tilted 15 degrees, rows head to feet, slices stacked towards the
# front, against the DICOM slice normal (row x column direction), so a reader sorts them in reverse.
_TILT = np.deg2rad(15)
CORONAL = np.array(
    [
        [-0.8 * np.cos(_TILT), 0, 2.0 * np.sin(_TILT), 10.0],
        [0.8 * np.sin(_TILT), 0, 2.0 * np.cos(_TILT), 4.0],
        [0, -1.1, 0, 40.0],
        [0, 0, 0, 1],
    ]
)


def classes_by_voxel(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """(X, Y, Z) labels that differ under every flip and transposition: class 1 an L-shaped block, class 2
    a bar on one corner of two slices."""
    labels = np.zeros(shape, np.int64)
    labels[2:6, 3:12, 1:3] = 1
    labels[2:10, 3:5, 1:4] = 1
    labels[11:15, 1:4, 4:6] = 2
    return labels


def dicom_case(root: Path, affine: np.ndarray, labels: np.ndarray, name: str = "case1") -> Path:
    """``root/in/<name>/``: a DICOM series whose intensities encode ``labels``."""
    write_dicom_series(root / "in" / name, STEP * labels + OFFSET, affine)
    return root / "in"


def predict_item(predict_dir: Path, spacing: tuple[float, float, float] | None = None) -> dict:
    """The one preprocessed item of ``predict_dir`` (reoriented to RAS, resampled to ``spacing``)."""
    dm = VolumeDataModule(
        root=str(predict_dir), predict_dir=str(predict_dir), spacing=spacing, normalization="none", num_workers=0
    )
    dm.setup("predict")
    return dm.datasets["predict"][0]


def perfect_probabilities(item: dict, num_classes: int = 3) -> torch.Tensor:
    """(K, X, Y, Z) one-hot of the classes the preprocessed image encodes."""
    labels = torch.as_tensor(np.round((np.asarray(item["image"][0]) - OFFSET) / STEP)).long().clamp(0, num_classes - 1)
    return torch.nn.functional.one_hot(labels, num_classes).permute(3, 0, 1, 2).float()


def write(writer: MaskWriter, item: dict, probabilities: torch.Tensor, class_names: list[str] = CLASSES) -> None:
    """``writer`` on a batch of one item, as Lightning calls it during predict."""
    prediction = {"name": [item["name"]], "probabilities": probabilities[None]}
    module = SimpleNamespace(class_names=class_names)
    writer.write_on_batch_end(None, module, prediction, None, {"geometry": [item["geometry"]]}, 0)  # type: ignore[arg-type]


def source_datasets(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in sorted(folder.iterdir())]


@pytest.mark.parametrize("affine", [AXIAL, CORONAL], ids=["axial", "coronal-oblique-reversed"])
def test_each_source_instance_gets_its_own_slice_of_the_mask(tmp_path: Path, affine: np.ndarray):
    predict_dir = dicom_case(tmp_path, affine, classes_by_voxel())
    item = predict_item(predict_dir)
    write(MaskWriter(str(tmp_path / "out")), item, perfect_probabilities(item))

    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case1.dcm"]  # auto: DICOM-SEG only
    seg = hd.seg.segread(tmp_path / "out" / "case1.dcm")
    sources = source_datasets(predict_dir / "case1")
    for source in sources:
        expected = (source.pixel_array[..., None] - OFFSET) // STEP == np.array([1, 2])
        np.testing.assert_array_equal(seg_frames(seg, source, 2), expected, err_msg=f"slice {source.InstanceNumber}")
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID


def test_seg_describes_the_classes_and_references_the_series(tmp_path: Path):
    predict_dir = dicom_case(tmp_path, AXIAL, classes_by_voxel())
    item = predict_item(predict_dir)
    write(MaskWriter(str(tmp_path / "out"), format="dicom_seg"), item, perfect_probabilities(item))

    seg = hd.seg.segread(tmp_path / "out" / "case1.dcm")
    source = source_datasets(predict_dir / "case1")[0]
    assert seg.SOPClassUID == SegmentationStorage
    assert seg.SegmentationType == "BINARY"
    assert seg.get_segment_numbers() == [1, 2]
    descriptions = [seg.get_segment_description(k) for k in (1, 2)]
    assert [d.segment_label for d in descriptions] == ["liver", "tumour"]
    assert {d.algorithm_type for d in descriptions} == {hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC}
    assert {d.algorithm_identification[0].AlgorithmName for d in descriptions} == {"segpipe"}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == SHAPE[2]
    assert (seg.StudyInstanceUID, seg.PatientID) == (source.StudyInstanceUID, source.PatientID)
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID


def test_reimported_seg_equals_the_nifti_mask_voxel_for_voxel(tmp_path: Path):
    predict_dir = dicom_case(tmp_path, CORONAL, classes_by_voxel())
    item = predict_item(predict_dir, spacing=(1.0, 1.3, 1.5))  # resampled: the restore interpolates
    rng = torch.Generator().manual_seed(0)
    logits = 3 * perfect_probabilities(item) + torch.randn(3, *item["image"].shape[1:], generator=rng)
    probabilities = torch.softmax(logits, 0)
    write(MaskWriter(str(tmp_path / "nifti"), format="nifti"), item, probabilities)
    write(MaskWriter(str(tmp_path / "seg"), save_probabilities=True), item, probabilities)

    nifti = nib.load(tmp_path / "nifti" / "case1.nii.gz")
    reference = np.asanyarray(nifti.dataobj)
    assert nifti.shape == SHAPE and set(np.unique(reference)) == {0, 1, 2}
    reimported = seg_labels_volume(tmp_path / "seg" / "case1.dcm", predict_dir / "case1", nifti.affine, SHAPE)
    np.testing.assert_array_equal(reimported, reference)
    # Probabilities (which DICOM-SEG does not hold) beside it as NIfTI, on the series' grid.
    probabilities_file = nib.load(tmp_path / "seg" / "case1_probabilities.nii.gz")
    np.testing.assert_allclose(probabilities_file.affine, nifti.affine, atol=1e-5)
    np.testing.assert_array_equal(probabilities_file.get_fdata().argmax(-1), reference)


@pytest.mark.parametrize("labels", ["last class empty", "only class 2", "all background"])
def test_empty_classes_keep_their_segment_and_read_back_empty(tmp_path: Path, labels: str):
    truth = {
        "last class empty": classes_by_voxel(),
        "only class 2": np.where(classes_by_voxel() == 2, 2, 0),
        "all background": np.zeros(SHAPE, np.int64),
    }[labels]
    predict_dir = dicom_case(tmp_path, AXIAL, truth)
    item = predict_item(predict_dir)
    names = [*CLASSES, "vessel"]  # class 3 never predicted
    write(MaskWriter(str(tmp_path / "out")), item, perfect_probabilities(item, num_classes=4), names)

    seg = hd.seg.segread(tmp_path / "out" / "case1.dcm")
    assert [seg.get_segment_description(k).segment_label for k in seg.get_segment_numbers()] == names[1:]
    for source in source_datasets(predict_dir / "case1"):
        frames = seg_frames(seg, source, 3)
        expected = (source.pixel_array[..., None] - OFFSET) // STEP == np.array([1, 2, 3])
        np.testing.assert_array_equal(frames, expected)
    assert not seg_frames(seg, source, 3)[..., 2].any()


def test_format_chooses_nifti_for_other_inputs_and_on_request(tmp_path: Path):
    labels = classes_by_voxel()
    write_volume(tmp_path / "in" / "volume.nii.gz", STEP * labels + OFFSET, AXIAL)
    dicom_case(tmp_path, AXIAL, labels, name="series")
    dm = VolumeDataModule(
        root=str(tmp_path / "in"), predict_dir=str(tmp_path / "in"), spacing=None, normalization="none", num_workers=0
    )
    dm.setup("predict")
    items = {item["name"]: item for item in dm.datasets["predict"]}
    for item in items.values():
        write(MaskWriter(str(tmp_path / "auto")), item, perfect_probabilities(item))
        write(MaskWriter(str(tmp_path / "nifti"), format="nifti"), item, perfect_probabilities(item))
    assert sorted(p.name for p in (tmp_path / "auto").iterdir()) == ["series.dcm", "volume.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "nifti").iterdir()) == ["series.nii.gz", "volume.nii.gz"]
    series_mask = nib.load(tmp_path / "nifti" / "series.nii.gz")
    np.testing.assert_allclose(series_mask.affine, AXIAL, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(series_mask.dataobj), labels)


def test_dicom_seg_refuses_other_inputs_before_writing(tmp_path: Path):
    write_volume(tmp_path / "in" / "volume.nii.gz", STEP * classes_by_voxel() + OFFSET, AXIAL)
    dicom_case(tmp_path, AXIAL, classes_by_voxel(), name="series")
    dm = VolumeDataModule(
        root=str(tmp_path / "in"), predict_dir=str(tmp_path / "in"), spacing=None, normalization="none", num_workers=0
    )
    writer = MaskWriter(str(tmp_path / "out"), format="dicom_seg")
    with pytest.raises(DataError, match=r"volume\.nii\.gz: is not a DICOM series"):
        writer.on_predict_start(SimpleNamespace(datamodule=dm), None)  # type: ignore[arg-type]
    dm.setup("predict")
    volume = next(item for item in dm.datasets["predict"] if item["name"] == "volume")
    with pytest.raises(DataError, match="is not a DICOM series"):
        write(writer, volume, perfect_probabilities(volume))
    assert not (tmp_path / "out").exists()
    images = SimpleNamespace(datamodule=SimpleNamespace(predict_cases=lambda: [SimpleNamespace(image="a.png")]))
    with pytest.raises(SegpipeError, match="dicom_seg writes volumes; 2D images are written as PNG"):
        writer.on_predict_start(images, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="format must be one of auto, nifti, dicom_seg"):
        MaskWriter(format="dicom")  # type: ignore[arg-type]


def test_seg_is_not_written_into_the_series_folder(tmp_path: Path):
    predict_dir = dicom_case(tmp_path, AXIAL, classes_by_voxel())
    item = predict_item(predict_dir)
    before = sorted(p.name for p in (predict_dir / "case1").iterdir())
    with pytest.raises(DataError, match="into its input DICOM series folder"):
        write_dicom_seg(predict_dir / "case1" / "case1.dcm", classes_by_voxel(), item["geometry"], CLASSES)
    assert sorted(p.name for p in (predict_dir / "case1").iterdir()) == before


def test_instances_off_the_grid_are_refused(tmp_path: Path):
    predict_dir = dicom_case(tmp_path, AXIAL, classes_by_voxel())
    item = predict_item(predict_dir)
    geometry = dict(item["geometry"])
    geometry["affine"] = AXIAL @ np.diag([1.0, 1.0, 2.0, 1.0])  # twice the slice spacing: odd slices fall between
    with pytest.raises(DataError, match=r"case1: instance .* is not a slice of the series' \(17, 14, 6\) grid"):
        write_dicom_seg(tmp_path / "out" / "case1.dcm", classes_by_voxel(), geometry, CLASSES)
    assert not (tmp_path / "out").exists()
