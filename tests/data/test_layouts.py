"""Dataset layouts: nnU-Net v2 and Decathlon dataset.json, explicit case lists, DICOM folders as cases."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from corpus import AFFINE, SHAPE, volume_case, write_dicom_series, write_json, write_nnunet, write_volumes

from segpipe.data import VolumeDataModule
from segpipe.data.sources.case_lists import read_case_list
from segpipe.data.sources.dataset_json import read_dataset_json
from segpipe.errors import DataError
from segpipe.io.volumes import write_label, write_volume


def problems_of(dm: VolumeDataModule, **kwargs: object) -> list[tuple[str, str]]:
    return [(p.path.name, p.problem) for p in dm.report(**kwargs).problems]


# ---- nnU-Net v2 dataset.json -------------------------------------------------------------------------
def test_nnunet_dataset_json_declares_classes_and_channels(tmp_path: Path):
    root = write_nnunet(tmp_path / "Dataset001", n=4, channels=2)
    dm = VolumeDataModule(root=str(root), val_fraction=0.25, num_workers=0)
    declared = dm.declaration()
    assert declared is not None and declared.flavour == "nnunetv2"
    assert declared.class_names == ("background", "ball", "cube") and declared.channel_names == ("mod0", "mod1")
    report = dm.report()  # no model: classes and channels come from dataset.json
    assert report.ok and report.class_names == ("background", "ball", "cube")
    assert {c.channels for c in report.cases} == {2} and report.labels_found() == [0, 1, 2]
    assert problems_of(dm, num_classes=3, in_channels=2) == []
    found = problems_of(dm, num_classes=4, in_channels=1)
    assert found[:2] == [
        ("dataset.json", "declares 3 labels, the model has num_classes=4"),
        ("dataset.json", "declares 2 channels, the model has in_channels=1"),
    ]
    assert sorted(found[2:]) == [(f"case_{i:03d}_0000.nii.gz", "has 2 channels, the model expects 1") for i in range(4)]


def test_data_that_disagree_with_dataset_json_are_reported(tmp_path: Path):
    root = write_nnunet(tmp_path / "Dataset002", n=4, channels=2)
    content = read_dataset_json(root / "dataset.json")
    write_json(
        root / "dataset.json",
        {
            "channel_names": {"0": "T1", "1": "T2"},
            "labels": {"background": 0, "ball": 1},
            "numTraining": 7,
            "file_ending": ".nii.gz",
        },
    )
    assert content.num_training == 4
    (root / "imagesTr" / "case_003_0001.nii.gz").unlink()  # case_003 has one channel now
    image, label = volume_case(np.random.default_rng(0))
    write_volume(tmp_path / "case_004.nii.gz", image, AFFINE)
    for channel in ("0000", "0001"):  # another file ending
        sitk.WriteImage(
            sitk.ReadImage(str(tmp_path / "case_004.nii.gz")), str(root / "imagesTr" / f"case_004_{channel}.nrrd")
        )
    write_label(root / "labelsTr" / "case_004.nii.gz", label, AFFINE)
    found = problems_of(VolumeDataModule(root=str(root), val_fraction=0.2, num_workers=0))
    assert ("dataset.json", "numTraining is 7, but 5 images found") in found
    assert ("case_004_0000.nrrd", "does not end in .nii.gz, the file_ending of dataset.json") in found
    assert ("case_003_0000.nii.gz", "has 1 channels, dataset.json declares 2") in found
    out_of_range = [p for name, p in found if name.startswith("case_") and "outside" in p]
    assert out_of_range and all(
        p == "labels [2] are outside the 2 classes 0..1 declared in dataset.json" for p in out_of_range
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"is not valid JSON \(Expecting property name enclosed in double quotes at line 1, column 2\)"),
        ([1, 2], "is neither an nnU-Net v2 dataset.json"),
        (
            {"channel_names": {"0": "CT"}, "labels": {"background": 0}},
            "'numTraining' is missing; 'file_ending' is missing",
        ),
        (
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "tumor": [1, 2]},
                "numTraining": 1,
                "file_ending": ".nii.gz",
            },
            "region-based labels",
        ),
        (
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "liver": 2},
                "numTraining": 1,
                "file_ending": ".nii.gz",
            },
            r"'labels' values must be 0\.\.1",
        ),
        (
            {"channel_names": {"1": "CT"}, "labels": {"background": 0}, "numTraining": -1, "file_ending": ".gif"},
            r"'numTraining' must be a count >= 0.*'channel_names' indices must be 0\.\.0.*'file_ending' must be one of",
        ),
        (
            {"modality": {"0": "MR"}, "labels": {"0": "bg"}, "numTraining": 1, "training": [{"label": "x"}]},
            'lack an "image"',
        ),
    ],
)
def test_invalid_dataset_json_is_one_problem_naming_it(tmp_path: Path, content: object, message: str):
    root = write_nnunet(tmp_path / "Dataset003", n=3)
    if isinstance(content, str):
        (root / "dataset.json").write_text(content)
    else:
        write_json(root / "dataset.json", content)
    with pytest.raises(DataError, match=message) as err:
        read_dataset_json(root / "dataset.json")
    assert "\n" not in str(err.value)
    problems = VolumeDataModule(root=str(root), val_fraction=0.34, num_workers=0).report(num_classes=3).problems
    assert [p.path.name for p in problems] == ["dataset.json"] and re.search(message, problems[0].problem)


# ---- Decathlon ---------------------------------------------------------------------------------------
def write_decathlon(root: Path, n: int = 4, v1_channel_files: bool = False) -> Path:
    """MSD layout: imagesTr/<case>.nii.gz with 2 modalities in one 4D file (or nnU-Net v1: _0000/_0001)."""
    rng = np.random.default_rng(3)
    for i in range(n + 1):
        image, label = volume_case(rng)
        stack = np.stack([image, 2 * image])
        folder = "imagesTr" if i < n else "imagesTs"
        if v1_channel_files:
            for c in range(2):
                write_volume(root / folder / f"brain_{i:03d}_{c:04d}.nii.gz", stack[c], AFFINE)
        else:
            write_volume(root / folder / f"brain_{i:03d}.nii.gz", stack, AFFINE)
        if i < n:
            write_label(root / "labelsTr" / f"brain_{i:03d}.nii.gz", label, AFFINE)
    write_json(
        root / "dataset.json",
        {
            "name": "Brains",
            "modality": {"0": "FLAIR", "1": "T1w"},
            "labels": {"0": "background", "1": "ball", "2": "cube"},
            "numTraining": n,
            "numTest": 1,
            "training": [
                {"image": f"./imagesTr/brain_{i:03d}.nii.gz", "label": f"./labelsTr/brain_{i:03d}.nii.gz"}
                for i in range(n)
            ],
            "test": [f"./imagesTs/brain_{n:03d}.nii.gz"],
        },
    )
    return root


@pytest.mark.parametrize("v1_channel_files", [False, True], ids=["msd-4d", "nnunet-v1-channel-files"])
def test_decathlon_dataset_json_lists_the_cases(tmp_path: Path, v1_channel_files: bool):
    root = write_decathlon(tmp_path / "Task01_Brains", v1_channel_files=v1_channel_files)
    dm = VolumeDataModule(root=str(root), val_fraction=0.25, num_workers=0)
    assert dm.resolved_layout() == "decathlon"
    cases = sorted((c for split in dm.cases().values() for c in split), key=lambda c: c.name)
    assert [c.name for c in cases] == [f"brain_{i:03d}" for i in range(4)]
    assert len(cases[0].images) == (2 if v1_channel_files else 1)
    assert cases[0].label == root / "labelsTr" / "brain_000.nii.gz"
    report = dm.report(num_classes=3, in_channels=2)
    assert report.ok, report.problems
    assert {c.channels for c in report.cases} == {2}
    [predict] = dm.predict_cases()
    assert predict.name == "brain_004" and predict.label is None
    found = problems_of(dm, num_classes=3, in_channels=1)
    assert found[0] == ("dataset.json", "declares 2 channels, the model has in_channels=1")
    assert found[1] == (
        "brain_000_0000.nii.gz" if v1_channel_files else "brain_000.nii.gz",
        "has 2 channels, the model expects 1"
        if v1_channel_files
        else f"has 2 channels (a 4D file of shape (2, {', '.join(map(str, SHAPE))})), the model expects 1",
    )


def test_decathlon_numtraining_and_missing_files_are_reported(tmp_path: Path):
    root = write_decathlon(tmp_path / "Task02", n=3)
    content = (root / "dataset.json").read_text().replace('"numTraining": 3', '"numTraining": 5')
    (root / "dataset.json").write_text(content)
    (root / "labelsTr" / "brain_001.nii.gz").unlink()
    found = problems_of(
        VolumeDataModule(root=str(root), val_fraction=0.34, num_workers=0), num_classes=3, in_channels=2
    )
    assert found == [
        ("dataset.json", "numTraining is 5, but 3 training entries"),
        ("brain_001.nii.gz", "file does not exist"),
    ]


# ---- explicit case lists -----------------------------------------------------------------------------
def test_csv_case_list_with_channel_columns_semicolons_and_rows_to_predict(tmp_path: Path):
    rng = np.random.default_rng(4)
    for i in range(4):
        image, label = volume_case(rng)
        write_volume(tmp_path / "scans" / f"s{i}_t1.nii.gz", image, AFFINE)
        write_volume(tmp_path / "scans" / f"s{i}_t2.nii.gz", image + 1, AFFINE)
        write_label(tmp_path / "seg" / f"s{i}.nii.gz", label, AFFINE)
    lines = ["name,image_0000,image_0001,label"]
    lines += [f"p{i},scans/s{i}_t1.nii.gz,scans/s{i}_t2.nii.gz,seg/s{i}.nii.gz" for i in range(3)]
    lines += ["p3,scans/s3_t1.nii.gz,scans/s3_t2.nii.gz,"]  # no label: to predict
    (tmp_path / "cases.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "semi.csv").write_text(
        "image,label\n" + "".join(f"scans/s{i}_t1.nii.gz; scans/s{i}_t2.nii.gz,seg/s{i}.nii.gz\n" for i in range(3))
    )

    dm = VolumeDataModule(root=str(tmp_path / "cases.csv"), val_fraction=0.34, num_workers=0)
    assert dm.resolved_layout() == "list"
    cases = sorted((c for split in dm.cases().values() for c in split), key=lambda c: c.name)
    assert [c.name for c in cases] == ["p0", "p1", "p2"]
    assert cases[1].images == (tmp_path / "scans" / "s1_t1.nii.gz", tmp_path / "scans" / "s1_t2.nii.gz")
    assert dm.report(num_classes=3, in_channels=2).ok
    assert [(c.name, c.label) for c in dm.predict_cases()] == [("p3", None)]

    semi = VolumeDataModule(root=str(tmp_path), list_file="semi.csv", val_fraction=0.34, num_workers=0)
    assert semi.resolved_layout() == "list"
    semi_cases = sorted((c for split in semi.cases().values() for c in split), key=lambda c: c.name)
    assert [c.name for c in semi_cases] == ["s0_t1", "s1_t1", "s2_t1"]
    assert [len(c.images) for c in semi_cases] == [2, 2, 2]


def test_json_case_list_and_list_problems(tmp_path: Path):
    root = write_volumes(tmp_path, n=3)
    entries = [{"image": f"images/case_{i:02d}.nii.gz", "label": f"labels/case_{i:02d}.nii.gz"} for i in range(3)]
    write_json(
        tmp_path / "list.json", [*entries, {"image": "images/case_00.nii.gz", "label": "x.nii.gz"}, {"label": "y"}]
    )
    found, problems = read_case_list(tmp_path / "list.json")
    assert [name for name, _, _ in found] == ["case_00", "case_01", "case_02"]
    assert [p.problem for p in problems] == [
        "entry 3: case name 'case_00' is already used (entry 0)",
        "entry 4: no image path",
    ]
    (tmp_path / "bad.csv").write_text("scan,seg\na.nii.gz,b.nii.gz\n")
    with pytest.raises(DataError, match=r"needs an 'image' column .*found columns \['scan', 'seg'\]"):
        read_case_list(tmp_path / "bad.csv")
    write_json(tmp_path / "missing.json", [{"image": "images/gone.nii.gz", "label": "labels/case_00.nii.gz"}])
    dm = VolumeDataModule(root=str(root / "missing.json"), val_fraction=0.0, num_workers=0)
    assert problems_of(dm, num_classes=3, in_channels=1, stage="validate") == [
        ("gone.nii.gz", "file does not exist"),
        ("missing.json", "the val split is empty"),
    ]


# ---- DICOM series as cases ---------------------------------------------------------------------------
def test_dicom_series_folders_pair_with_nifti_labels(tmp_path: Path):
    rng = np.random.default_rng(5)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ AFFINE
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = tuple((lps[:3, :3] / spacing).ravel())
    for i in range(3):
        image, label = volume_case(rng)
        write_dicom_series(
            tmp_path / "images" / f"patient {i}", image, tuple(spacing), tuple(lps[:3, 3]), direction, f"1.2.3.{i}"
        )
        write_label(tmp_path / "labels" / f"patient {i}.nii.gz", label, AFFINE)
    dm = VolumeDataModule(root=str(tmp_path), val_fraction=0.34, num_workers=0)
    assert dm.resolved_layout() == "images_labels"
    report = dm.report(num_classes=3, in_channels=1)
    assert report.ok, report.problems
    assert sorted(c.name for c in report.cases) == ["patient 0", "patient 1", "patient 2"]
    assert all(c.spacing == pytest.approx((0.8, 1.2, 2.5)) for c in report.cases)
