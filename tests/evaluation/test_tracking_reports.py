"""Per-case test metrics, their summary, figures and run metadata helpers (no training)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from segpipe.data.sources.pairing import Case
from segpipe.evaluation.case_metrics import case_columns, case_metrics, foreground_dice, summarize_cases, unit_of
from segpipe.evaluation.report import summary_table, write_csv, write_report
from segpipe.models import build_model
from segpipe.tracking.case_report import gather_cases, mean_metrics
from segpipe.tracking.figures import (
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    box_plot_figure,
    error_map,
    overlay_figure,
    representative_slice,
)
from segpipe.tracking.metadata import data_fingerprint, model_size
from segpipe.tracking.overlays import fixed_indices, improves

NAMES = ["background", "disc", "square"]


def squares() -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: class 1 a 4x4 square; prediction: the same square shifted by one column. Class 2 absent."""
    ref = torch.zeros(11, 9, dtype=torch.long)
    pred = torch.zeros(11, 9, dtype=torch.long)
    ref[2:6, 2:6] = 1
    pred[2:6, 3:7] = 1
    return pred, ref


def test_case_metrics_values_and_empty_class_convention():
    pred, ref = squares()
    rows = case_metrics(pred, ref, NAMES, "c1")
    assert [r["class"] for r in rows] == ["disc", "square"]
    disc, square = rows
    # 12 of 16 pixels overlap: Dice 2*12/32, IoU 12/20; boundaries one pixel apart.
    assert disc["dice"] == pytest.approx(0.75) and disc["iou"] == pytest.approx(0.6)
    assert disc["hd95_px"] == pytest.approx(1.0) and 0 < disc["asd_px"] <= 1.0  # 2D, no spacing: pixels
    assert disc["volume_pred"] == 16 and disc["volume_ref"] == 16
    assert all(math.isnan(square[k]) for k in ("dice", "iou", "hd95_px", "asd_px"))  # empty in both
    assert square["volume_pred"] == 0 and square["volume_ref"] == 0


def test_missed_structure_scores_zero_overlap_and_no_distance_and_spacing_scales():
    pred, ref = squares()
    missed = case_metrics(torch.zeros_like(ref), ref, NAMES, "c")[0]
    assert missed["dice"] == 0 and missed["iou"] == 0
    assert math.isnan(missed["hd95_px"]) and math.isnan(missed["asd_px"])
    scaled = case_metrics(pred, ref, NAMES, "c", spacing=[2.0, 3.0])[0]
    assert scaled["hd95_mm"] == pytest.approx(3.0) and "hd95_px" not in scaled  # shifted along the 3 mm axis
    volume = case_metrics(pred[..., None], ref[..., None], NAMES, "v")[0]
    assert "hd95_vox" in volume and "asd_vox" in volume  # a volume without spacing: voxels
    assert scaled["volume_ref"] == pytest.approx(16 * 6.0)


def test_summary_excludes_nan_and_csv_writes_empty_cells(tmp_path: Path):
    pred, ref = squares()
    rows = case_metrics(pred, ref, NAMES, "a") + case_metrics(ref, ref, NAMES, "b")
    summary = {(s["class"], s["metric"]): s for s in summarize_cases(rows)}
    assert summary["disc", "dice"]["n"] == 2
    assert summary["disc", "dice"]["mean"] == pytest.approx(0.875)
    assert summary["disc", "dice"]["median"] == pytest.approx(0.875)
    assert summary["disc", "dice"]["std"] == pytest.approx(0.125)
    assert summary["square", "dice"]["n"] == 0 and math.isnan(summary["square", "dice"]["mean"])
    path = write_csv(tmp_path / "cases.csv", rows, case_columns("px"))
    lines = path.read_text().splitlines()
    assert lines[0] == "case,class,dice,iou,hd95_px,asd_px,volume_pred,volume_ref"
    assert lines[1].startswith("a,disc,0.75,0.6,")  # 6 significant digits: readable in the MLflow UI
    assert lines[2] == "a,square,,,,,0,0"
    assert summary_table(list(summary.values())).row_count == 2


def test_report_names_distances_with_their_unit_and_refuses_mixed_units(tmp_path: Path):
    pred, ref = squares()
    report = write_report(tmp_path, case_metrics(pred, ref, NAMES, "a", spacing=[2.0, 3.0]))
    assert report.unit == "mm"
    assert report.cases_csv.read_text().splitlines()[0] == "case,class,dice,iou,hd95_mm,asd_mm,volume_pred,volume_ref"
    assert {s["metric"] for s in report.summary} == {"dice", "iou", "hd95_mm", "asd_mm"}
    with pytest.raises(ValueError, match=r"different units \['mm', 'px'\]"):
        unit_of(case_metrics(pred, ref, NAMES, "a") + report.rows)


def test_per_case_means_are_named_by_class_index_and_foreground_mean():
    pred, ref = squares()
    rows = case_metrics(pred, ref, NAMES, "a") + case_metrics(ref, ref, NAMES, "b")
    extra = {"case": "b", "class": "square", "dice": 0.5, "iou": 0.25, "hd95_px": 2.0, "asd_px": 1.0}
    metrics = mean_metrics(summarize_cases([*rows, {**extra, "volume_pred": 1.0, "volume_ref": 1.0}]), NAMES)
    assert metrics["test/dice_mean_disc"] == pytest.approx(0.875) == metrics["test/dice_mean_c1"]
    assert metrics["test/dice_mean_square"] == pytest.approx(0.5) == metrics["test/dice_mean_c2"]
    assert metrics["test/dice_mean_fg_mean"] == pytest.approx((0.875 + 0.5) / 2)
    assert metrics["test/iou_mean_c1"] == pytest.approx(0.8)  # (0.6 + 1) / 2
    assert metrics["test/hd95_px_mean_disc"] == pytest.approx(0.5)  # the shifted square 1 px, the exact one 0
    assert metrics["test/hd95_px_mean_square"] == pytest.approx(2.0)
    assert "test/asd_px_mean_fg_mean" in metrics and not any("hd95_mm" in k for k in metrics)
    # a class that no case scores (all NaN) is left out, and out of the foreground mean
    only_disc = mean_metrics(summarize_cases(rows), NAMES)
    assert "test/dice_mean_square" not in only_disc and only_disc["test/dice_mean_fg_mean"] == pytest.approx(0.875)


def test_error_map_marks_false_positives_and_negatives_and_overlay_shows_dice():
    pred, ref = squares()
    errors = error_map(ref.numpy(), pred.numpy())
    assert (errors == FALSE_POSITIVE).sum() == 4 and errors[2:6, 6].tolist() == [FALSE_POSITIVE] * 4
    assert (errors == FALSE_NEGATIVE).sum() == 4 and errors[2:6, 2].tolist() == [FALSE_NEGATIVE] * 4
    wrong_class = error_map(np.array([[1, 0]]), np.array([[2, 0]]))
    assert wrong_class.tolist() == [[FALSE_POSITIVE, 0]]
    assert foreground_dice(pred.numpy(), ref.numpy(), 3) == pytest.approx(0.75)  # class 2 absent: not averaged
    assert math.isnan(foreground_dice(np.zeros((3, 3)), np.zeros((3, 3)), 3))
    image = np.random.default_rng(0).normal(size=(11, 9))
    fig = overlay_figure([image, image], [ref.numpy()] * 2, [pred.numpy()] * 2, ["a", "b"], NAMES, "e", [0.75, 0.5])
    assert len(fig.axes) == 8  # image, ground truth, prediction, errors per case
    assert [ax.get_title() for ax in fig.axes[:4]] == ["image", "ground truth", "prediction, Dice 0.750", "errors"]
    assert fig.axes[6].get_title() == "prediction, Dice 0.500"
    assert improves(0.5, None, "max") and improves(0.6, 0.5, "max") and not improves(0.5, 0.5, "max")
    assert improves(0.4, 0.5, "min") and not improves(0.6, 0.5, "min")


def test_figures_have_a_panel_per_metric():
    pred, ref = squares()
    rows = case_metrics(pred, ref, NAMES, "a")
    assert len(box_plot_figure(rows, ("dice", "hd95_px")).axes) == 2
    volume = np.zeros((4, 5, 6), np.int64)
    volume[1:3, 1:3, 4] = 1
    assert representative_slice(volume) == 4
    assert fixed_indices(10, 4) == [0, 3, 6, 9] and fixed_indices(2, 4) == [0, 1] and fixed_indices(0, 3) == []


def test_data_fingerprint_changes_with_content_and_counts_splits(tmp_path: Path):
    files = []
    for i in range(3):
        image, mask = tmp_path / f"i{i}.png", tmp_path / f"m{i}.png"
        image.write_bytes(b"x" * (i + 1))
        mask.write_bytes(b"y")
        files.append(Case(f"c{i}", image, mask))
    splits = {"train": files[:2], "val": files[2:]}
    first = data_fingerprint(splits)
    assert first["data.n_train"] == "2" and first["data.n_val"] == "1" and len(first["data.fingerprint"]) == 16
    assert data_fingerprint(splits) == first
    assert data_fingerprint({"train": files[:1], "val": files[1:]})["data.fingerprint"] != first["data.fingerprint"]
    files[0].image.write_bytes(b"changed")
    os.utime(files[0].image, ns=(1, 1))
    assert data_fingerprint(splits)["data.fingerprint"] != first["data.fingerprint"]


def test_model_size_matches_the_parameter_count():
    net = build_model("unet", 2, 1, 3, depth=2, base_channels=4)
    size = model_size(net, (1, 1, 37, 33))
    assert int(size["model.params"]) == sum(p.numel() for p in net.parameters())
    assert int(size["model.macs_per_sample"]) > 0 and size["model.summary_input"] == "1x1x37x33"
    assert next(net.parameters()).device.type == "cpu"  # the summary ran on a copy


def _case(name: str) -> list[dict[str, str | float]]:
    return [{"case": name, "class": "disc", "dice": 1.0}, {"case": name, "class": "square", "dice": 0.5}]


def test_gather_cases_without_process_group_keeps_the_rows():
    cases = [_case("a"), _case("b")]
    assert gather_cases(cases) is cases


def test_gather_cases_interleaves_ranks_and_keeps_each_case_once(monkeypatch: pytest.MonkeyPatch):
    # 3 ranks over cases c0..c6 read c0,c3,c6 | c1,c4 | c2,c5 (strided shards); a padding sampler adds
    # c0 to the last two ranks, which must not be reported twice.
    shards = [
        [_case("c0"), _case("c3"), _case("c6")],
        [_case("c1"), _case("c4"), _case("c0")],
        [_case("c2"), _case("c5")],
    ]

    def all_gather_object(output: list, obj: object) -> None:
        assert obj is shards[0]  # this process (rank 0) contributes its own cases
        output[:] = shards

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 3)
    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    gathered = gather_cases(shards[0])
    assert [case[0]["case"] for case in gathered] == [f"c{i}" for i in range(7)]
    assert all([row["class"] for row in case] == ["disc", "square"] for case in gathered)
