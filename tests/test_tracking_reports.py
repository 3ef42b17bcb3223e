"""Per-case test metrics, their summary, figures and run metadata helpers (no training)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from segpipe.data.pairing import Case
from segpipe.models import build_model
from segpipe.tracking.figures import box_plot_figure, overlay_figure, representative_slice
from segpipe.tracking.metadata import data_fingerprint, model_size
from segpipe.tracking.overlays import fixed_indices
from segpipe.tracking.reports import CASE_COLUMNS, case_metrics, summarize_cases, summary_table, write_csv

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
    assert disc["hd95"] == pytest.approx(1.0) and 0 < disc["asd"] <= 1.0
    assert disc["volume_pred"] == 16 and disc["volume_ref"] == 16
    assert all(math.isnan(square[k]) for k in ("dice", "iou", "hd95", "asd"))  # empty in both
    assert square["volume_pred"] == 0 and square["volume_ref"] == 0


def test_missed_structure_scores_zero_overlap_and_no_distance_and_spacing_scales():
    pred, ref = squares()
    missed = case_metrics(torch.zeros_like(ref), ref, NAMES, "c")[0]
    assert missed["dice"] == 0 and missed["iou"] == 0
    assert math.isnan(missed["hd95"]) and math.isnan(missed["asd"])
    scaled = case_metrics(pred, ref, NAMES, "c", spacing=[2.0, 3.0])[0]
    assert scaled["hd95"] == pytest.approx(3.0)  # the shift is along the second axis (3 mm)
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
    path = write_csv(tmp_path / "cases.csv", rows, CASE_COLUMNS)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(CASE_COLUMNS)
    assert lines[2] == "a,square,,,,,0.0,0.0"
    assert summary_table(list(summary.values())).row_count == 2


def test_figures_have_one_row_per_case_and_a_panel_per_metric():
    pred, ref = squares()
    image = np.random.default_rng(0).normal(size=(11, 9))
    fig = overlay_figure([image, image], [ref.numpy()] * 2, [pred.numpy()] * 2, ["a", "b"], NAMES, "epoch 0")
    assert len(fig.axes) == 6
    rows = case_metrics(pred, ref, NAMES, "a")
    assert len(box_plot_figure(rows).axes) == 2
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
