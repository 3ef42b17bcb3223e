"""``segpipe evaluate``: scores of a folder of predictions against labels, checked against numpy, and refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import tifffile

from segpipe.cli import main
from segpipe.io.images import write_mask
from segpipe.io.volumes import write_label


def blobs(shape: tuple[int, ...], num_classes: int, seed: int) -> np.ndarray:
    """A label map (*shape) with a box per foreground class at a seeded random place, later classes on top."""
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, np.int64)
    for c in range(1, num_classes):
        start = [int(rng.integers(0, n // 2)) for n in shape]
        size = [int(rng.integers(n // 4, n // 2)) for n in shape]
        out[tuple(slice(s, s + k) for s, k in zip(start, size, strict=True))] = c
    return out


def numpy_dice(pred: np.ndarray, ref: np.ndarray, c: int) -> float:
    p, r = pred == c, ref == c
    total = int(p.sum()) + int(r.sum())
    return 2.0 * int((p & r).sum()) / total if total else float("nan")


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def dice_of(rows: list[dict[str, str]], case: str, name: str) -> float:
    cell = next(r["dice"] for r in rows if r["case"] == case and r["class"] == name)
    return float(cell) if cell else float("nan")


def assert_dice_matches(out: Path, pairs: dict[str, tuple[np.ndarray, np.ndarray]], num_classes: int) -> None:
    rows = read_rows(out / "evaluation_cases.csv")
    assert len(rows) == len(pairs) * (num_classes - 1)
    for case, (pred, ref) in pairs.items():
        for c in range(1, num_classes):
            # the CSV keeps 6 significant digits; score_folder's rows are compared to 1e-6 in the tests below
            np.testing.assert_allclose(dice_of(rows, case, f"class{c}"), numpy_dice(pred, ref, c), atol=1e-5)


def write_png_pairs(tmp_path: Path, n: int = 3, num_classes: int = 3, pred_suffix: str = ".png"):
    preds, labels = tmp_path / "pred", tmp_path / "labels"
    pairs = {}
    for i in range(n):
        ref = blobs((32, 40), num_classes, i)
        pred = blobs((32, 40), num_classes, 100 + i)
        write_mask(labels / f"case_{i}.png", ref)
        if pred_suffix == ".png":
            write_mask(preds / f"case_{i}.png", pred)
        else:
            preds.mkdir(exist_ok=True)
            tifffile.imwrite(preds / f"case_{i}{pred_suffix}", pred.astype(np.uint8))
        pairs[f"case_{i}"] = (pred, ref)
    return preds, labels, pairs


def test_2d_pngs_reproduce_numpy_dice_to_1e_6(tmp_path: Path, capsys):
    from segpipe.evaluation.folder import score_folder

    preds, labels, pairs = write_png_pairs(tmp_path)
    rows = score_folder(preds, labels, tolerance=2.0)
    for row in rows:
        pred, ref = pairs[str(row["case"])]
        c = int(str(row["class"]).removeprefix("class"))
        np.testing.assert_allclose(float(row["dice"]), numpy_dice(pred, ref, c), atol=1e-6)
        assert "hd95_px" in row and 0.0 <= float(row["nsd"]) <= 1.0
    out = tmp_path / "report"
    assert main(["evaluate", str(preds), str(labels), "--out", str(out)]) == 0
    assert_dice_matches(out, pairs, 3)
    assert "Evaluation of" in capsys.readouterr().out
    summary = json.loads((out / "evaluation_summary.json").read_text())
    assert summary["unit"] == "px" and set(summary["classes"]) == {"class1", "class2"}
    assert summary["classes"]["class1"]["dice"]["n"] == 3
    assert (out / "evaluation_boxplots.png").stat().st_size > 0
    header = (out / "evaluation_summary.csv").read_text().splitlines()[0]
    assert header == "class,metric,n,mean,median,std"


def test_png_labels_against_tiff_predictions_and_default_output(tmp_path: Path):
    preds, labels, pairs = write_png_pairs(tmp_path, pred_suffix=".tif")
    assert main(["evaluate", str(preds), str(labels), "--labels", "bg", "class1", "class2"]) == 0
    assert_dice_matches(tmp_path / "evaluation", pairs, 3)


def test_identical_predictions_score_perfectly(tmp_path: Path):
    from segpipe.evaluation.folder import score_folder

    ref = blobs((24, 24), 2, 7)
    write_mask(tmp_path / "p" / "a.png", ref)
    write_mask(tmp_path / "l" / "a.png", ref)
    (row,) = score_folder(tmp_path / "p", tmp_path / "l", ["background", "organ"])
    assert row["class"] == "organ"
    assert (row["dice"], row["iou"], row["hd95_px"], row["asd_px"], row["nsd"]) == (1.0, 1.0, 0.0, 0.0, 1.0)


def volume_pairs(
    folder: Path, spacing: float, pred_format: str = ".nii.gz"
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    affine = np.diag([spacing, spacing, spacing, 1.0])
    pairs = {}
    for i in range(2):
        ref, pred = blobs((16, 18, 12), 3, i), blobs((16, 18, 12), 3, 50 + i)
        write_label(folder / "labels" / f"vol_{i}.nii.gz", ref, affine)
        if pred_format == ".nii.gz":
            write_label(folder / "pred" / f"vol_{i}.nii.gz", pred, affine)
        else:
            image = sitk.GetImageFromArray(pred.astype(np.uint8).transpose(2, 1, 0))
            image.SetSpacing((spacing,) * 3)
            image.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))  # RAS+ identity axes in ITK's LPS+
            (folder / "pred").mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(image, str(folder / "pred" / f"vol_{i}{pred_format}"))
        pairs[f"vol_{i}"] = (pred, ref)
    return pairs


def test_nifti_volumes_dice_to_1e_6_and_hd95_in_mm_scales_with_spacing(tmp_path: Path):
    from segpipe.evaluation.folder import score_folder

    scored = {}
    for spacing in (1.0, 2.5):
        folder = tmp_path / str(spacing)
        pairs = volume_pairs(folder, spacing)
        rows = score_folder(folder / "pred", folder / "labels", tolerance=1.0)
        for row in rows:
            pred, ref = pairs[str(row["case"])]
            c = int(str(row["class"]).removeprefix("class"))
            np.testing.assert_allclose(float(row["dice"]), numpy_dice(pred, ref, c), atol=1e-6)
        scored[spacing] = rows
    for one, other in zip(scored[1.0], scored[2.5], strict=True):
        np.testing.assert_allclose(other["hd95_mm"], 2.5 * float(one["hd95_mm"]), rtol=1e-6)
        np.testing.assert_allclose(other["asd_mm"], 2.5 * float(one["asd_mm"]), rtol=1e-6)
        np.testing.assert_allclose(other["dice"], one["dice"], atol=1e-12)


def test_nifti_labels_against_nrrd_predictions(tmp_path: Path):
    pairs = volume_pairs(tmp_path, 1.5, pred_format=".nrrd")
    out = tmp_path / "out"
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "labels"), "--out", str(out)]) == 0
    assert_dice_matches(out, pairs, 3)
    assert "hd95_mm" in (out / "evaluation_cases.csv").read_text().splitlines()[0]


def refused(capsys, argv: list[str], out: Path) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segpipe: error: ")
    assert not out.exists()
    return err[0]


def test_missing_prediction_is_one_line_naming_the_label_and_writes_nothing(tmp_path: Path, capsys):
    preds, labels, _ = write_png_pairs(tmp_path)
    (preds / "case_1.png").unlink()
    out = tmp_path / "out"
    line = refused(capsys, ["evaluate", str(preds), str(labels), "--out", str(out)], out)
    assert str(labels / "case_1.png") in line and "no prediction" in line


def test_prediction_without_label_is_refused(tmp_path: Path, capsys):
    preds, labels, _ = write_png_pairs(tmp_path)
    write_mask(preds / "extra.png", np.zeros((32, 40), np.int64))
    out = tmp_path / "out"
    assert str(preds / "extra.png") in refused(capsys, ["evaluate", str(preds), str(labels), "--out", str(out)], out)


def test_shape_mismatch_names_both_files(tmp_path: Path, capsys):
    preds, labels, _ = write_png_pairs(tmp_path)
    write_mask(preds / "case_2.png", np.zeros((30, 40), np.int64))
    out = tmp_path / "out"
    line = refused(capsys, ["evaluate", str(preds), str(labels), "--out", str(out)], out)
    assert str(preds / "case_2.png") in line and str(labels / "case_2.png") in line and "shape" in line


def test_affine_mismatch_names_both_files(tmp_path: Path, capsys):
    volume_pairs(tmp_path, 1.0)
    pred = tmp_path / "pred" / "vol_1.nii.gz"
    write_label(pred, blobs((16, 18, 12), 3, 1), np.diag([1.0, 1.0, 2.0, 1.0]))
    out = tmp_path / "out"
    line = refused(capsys, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "labels"), "--out", str(out)], out)
    assert str(pred) in line and str(tmp_path / "labels" / "vol_1.nii.gz") in line and "affines differ" in line


def test_a_label_without_a_name_is_refused(tmp_path: Path, capsys):
    preds, labels, _ = write_png_pairs(tmp_path)
    out = tmp_path / "out"
    line = refused(capsys, ["evaluate", str(preds), str(labels), "--labels", "bg", "one", "--out", str(out)], out)
    assert "holds label 2 but only 2 class names" in line


def test_class_names_from_a_fit_config(tmp_path: Path):
    from builders import tiny_config, write_config

    preds, labels, pairs = write_png_pairs(tmp_path)
    model = {**tiny_config(tmp_path)["model"], "class_names": ["background", "disc", "square"]}
    config = write_config(tmp_path / "tiny.yaml", tiny_config(tmp_path, model=model))
    out = tmp_path / "out"
    assert main(["evaluate", str(preds), str(labels), "--config", str(config), "--out", str(out)]) == 0
    rows = read_rows(out / "evaluation_cases.csv")
    assert {r["class"] for r in rows} == {"disc", "square"}
    np.testing.assert_allclose(dice_of(rows, "case_0", "square"), numpy_dice(*pairs["case_0"], 2), atol=1e-5)


def test_evaluate_agrees_with_the_scores_of_segpipe_test(tmp_path: Path):
    """``segpipe test`` scores its batches with batch_case_metrics; evaluate gives the same numbers."""
    import torch

    from segpipe.evaluation.case_metrics import batch_case_metrics
    from segpipe.evaluation.folder import score_folder

    pairs = volume_pairs(tmp_path, 2.0)
    rows = score_folder(tmp_path / "pred", tmp_path / "labels", tolerance=1.0)
    cases = sorted(pairs)
    batch = {
        "mask": torch.from_numpy(np.stack([pairs[c][1] for c in cases])),
        "name": cases,
        "spacing": torch.full((len(cases), 3), 2.0),
    }
    predictions = torch.from_numpy(np.stack([pairs[c][0] for c in cases]))
    tested = [row for case in batch_case_metrics(predictions, batch, ["class0", "class1", "class2"]) for row in case]
    assert len(tested) == len(rows)
    for ours, theirs in zip(rows, tested, strict=True):
        for key, value in theirs.items():
            if isinstance(value, float):
                np.testing.assert_allclose(ours[key], value, atol=1e-9, equal_nan=True)
            else:
                assert ours[key] == value
