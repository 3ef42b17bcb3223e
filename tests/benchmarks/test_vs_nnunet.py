"""The pure parts of benchmarks/vs_nnunet.py: the datasets (shapes, labels, a layout segpipe reads), the scoring
and the table's arithmetic. nnU-Net itself is not installed here."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from segpipe.data.demos.mni2d import mni_labels
from segpipe.data.demos.mni3d import build_mni_demo3d
from segpipe.data.sources.layouts import discover_cases, predict_cases, read_declaration, resolve_layout
from segpipe.errors import SegpipeError
from segpipe.io.volumes import read_label, read_volume, write_label

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from vs_nnunet import datasets, segpipe_side, table  # noqa: E402
from vs_nnunet.datasets import SETS, Case, block_affine, block_mean, write_raw_dataset  # noqa: E402


def test_block_mean_averages_blocks_and_the_affine_centres_them():
    volume = np.arange(4 * 2 * 6, dtype=np.float32).reshape(4, 2, 6)
    small = block_mean(volume, (2, 1, 3))
    assert small.shape == (2, 2, 2)
    assert small[1, 0, 1] == pytest.approx(volume[2:4, 0, 3:6].mean())
    affine = block_affine(np.diag([1.0, 1.0, 1.0, 1.0]), (10, 0, 5), (2, 1, 3))
    # Voxel (1, 0, 1) averages source voxels x 12..13, z 8..10: centre (12.5, 0, 9).
    assert affine @ np.array([1, 0, 1, 1]) == pytest.approx([12.5, 0.0, 9.0, 1.0])
    with pytest.raises(ValueError, match="multiple"):
        block_mean(volume, (3, 1, 1))


def test_template_slabs_at_the_3d_demos_voxel_size_are_its_slabs(tmp_path):
    splits = build_mni_demo3d(tmp_path / "demo3d")
    cases = datasets.template_slabs(mni_labels, 2, (2, 2, 1), "slab")
    assert [c.split for c in cases].count("test") == len(splits["test"]) == 2
    for case in cases:
        image, meta = read_volume(tmp_path / "demo3d" / "images" / f"mni152_{case.name}.nii.gz")
        label, _ = read_label(tmp_path / "demo3d" / "labels" / f"mni152_{case.name}.nii.gz")
        assert np.allclose(case.image, image[0], atol=1e-4)
        assert np.array_equal(case.label, label)
        assert np.allclose(case.affine, meta.affine, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "count", "shape", "spacing", "labels"),
    [
        ("mni2d", (93, 22), (197, 233, 1), (1, 1, 1), {0, 1, 2}),
        ("mni3d", (8, 2), (143, 180, None), (1, 1, 1), {0, 1, 2}),
        ("brainmask", (8, 2), (72, None, 77), (2, 2, 2), {0, 1}),
        ("mni3d_aniso", (8, 2), (143, 180, None), (1, 1, 3), {0, 1, 2}),
    ],
)
def test_set_shapes_spacing_and_labels(name, count, shape, spacing, labels):
    cases = datasets.BUILDERS[name]()
    held_out = [c for c in cases if c.split == "test"]
    assert (len(cases) - len(held_out), len(held_out)) == count
    for case in cases:
        assert all(want in (None, got) for want, got in zip(shape, case.image.shape, strict=True))
        assert case.label.shape == case.image.shape
        assert np.linalg.norm(case.affine[:3, :3], axis=0) == pytest.approx(spacing)
    assert set(np.unique(np.concatenate([c.label.ravel() for c in cases]))) == labels


def _tiny_cases() -> list[Case]:
    rng = np.random.default_rng(0)
    cases = []
    for i, split in enumerate(("train", "val", "train", "test")):
        label = (rng.random((9, 7, 5)) > 0.6).astype(np.uint8)
        cases.append(Case(f"c{i}", split, label * 100.0 + rng.random((9, 7, 5)), label, np.diag([2.0, 2, 3, 1])))
    return cases


def test_written_set_is_nnunet_raw_that_segpipe_reads(tmp_path):
    spec = SETS["brainmask"]
    folder = tmp_path / spec.folder_name
    write_raw_dataset(folder, spec, _tiny_cases())
    document = json.loads((folder / "dataset.json").read_text())
    assert document["numTraining"] == 3
    assert document["labels"] == {"background": 0, "brain": 1}
    assert document["channel_names"] == {"0": "T1"} and document["file_ending"] == ".nii.gz"
    assert resolve_layout(folder, "auto") == "nnunet"
    cases, problems = discover_cases(folder, "auto")
    assert problems == []
    assert [c.name for c in cases] == ["c0", "c1", "c2"]
    assert cases[0].images == (folder / "imagesTr" / "c0_0000.nii.gz",)
    assert read_declaration(folder).class_names == ("background", "brain")
    assert [c.name for c in predict_cases(folder, "nnunet", None)] == ["c3"]
    label, meta = read_label(folder / "labelsTs" / "c3.nii.gz")
    assert np.array_equal(label, _tiny_cases()[3].label) and meta.spacing == pytest.approx((2, 2, 3))


def test_mean_foreground_dice_skips_classes_absent_from_both():
    rows = [
        {"case": "a", "class": "grey", "dice": 0.8},
        {"case": "a", "class": "white", "dice": 0.6},
        {"case": "b", "class": "grey", "dice": 0.4},
        {"case": "b", "class": "white", "dice": math.nan},
    ]
    mean, per_class = table.mean_foreground_dice(rows)
    assert per_class == pytest.approx({"grey": 0.6, "white": 0.6})
    assert mean == pytest.approx(0.6)
    with pytest.raises(ValueError):
        table.mean_foreground_dice([{"case": "a", "class": "grey", "dice": math.nan}])


def test_score_uses_segpipe_evaluation_on_two_folders(tmp_path):
    reference = np.zeros((6, 5, 4), np.uint8)
    reference[:3] = 1
    prediction = np.zeros_like(reference)
    prediction[:2] = 1  # 40 of the 60 reference voxels: Dice 2 * 40 / (40 + 60) = 0.8
    for folder, array in (("labels", reference), ("pred", prediction)):
        write_label(tmp_path / folder / "c0.nii.gz", array, np.eye(4))
    result = table.score(tmp_path / "pred", tmp_path / "labels", ("background", "brain"))
    assert result["dice"] == pytest.approx(0.8)
    assert result["dice_per_class"] == pytest.approx({"brain": 0.8})
    assert result["cases"] == 1


def test_table_rows_and_markdown_leave_a_missing_tool_blank():
    times = {"budget_s": 180.0, "plan_s": 10.0, "train_s": 180.4, "predict_s": 5.6}
    results = {
        "mni3d": {"nnunet": {"dice": 0.85, "load_1min": [7.5, 9.25], **times}, "segpipe": {"dice": 0.9, **times}},
        "mni2d": {"nnunet": {"dice": 0.9, **times}, "segpipe": None},
    }
    rows = table.table_rows(results)
    assert rows[0]["segpipe_minus_nnunet"] == pytest.approx(0.05)
    assert rows[1]["segpipe_minus_nnunet"] is None and rows[1]["segpipe_train_s"] is None
    lines = table.markdown_table(rows).splitlines()
    assert lines[2] == "| mni3d | 180 | 0.8500 | 0.9000 | 0.0500 | 10 / 180 / 6 | 10 / 180 / 6 | 9.2 / - |"
    assert lines[3] == "| mni2d | 180 | 0.9000 | - | - | 10 / 180 / 6 | - / - / - | - / - |"


def test_best_checkpoint_is_the_newest_best_under_the_run_folder(tmp_path):
    older = tmp_path / "outputs" / "1" / "a" / "checkpoints" / "best-epoch001-dice0.5000.ckpt"
    newer = tmp_path / "outputs" / "1" / "b" / "checkpoints" / "best-epoch003-dice0.4000.ckpt"
    for index, path in enumerate((older, newer)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
        os.utime(path, (1000 + index, 1000 + index))
    (newer.parent / "last.ckpt").write_bytes(b"")
    assert segpipe_side.best_checkpoint(tmp_path) == newer
    with pytest.raises(SegpipeError, match="no best"):
        segpipe_side.best_checkpoint(tmp_path / "outputs" / "2")
