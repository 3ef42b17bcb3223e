"""Per-case test metrics (Dice, IoU, HD95, ASD, volumes) and their per-class summary.

Empty classes follow nnU-Net's convention, extended to the distances:

* reference and prediction both empty: every metric is NaN (nothing to score);
* exactly one of them empty: Dice and IoU are 0; HD95 and ASD are NaN (a distance to an empty set is
  undefined), so a missed or hallucinated structure is penalised by the overlap scores only;
* NaN values are left out of the mean, median and std, and the summary says how many cases were used.

Distances are in the units of ``spacing`` (pixels/voxels when it is not known); volumes are voxel counts
times the voxel volume.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance, compute_iou
from rich.console import Console
from rich.table import Table

CASE_COLUMNS = ("case", "class", "dice", "iou", "hd95", "asd", "volume_pred", "volume_ref")
SCORE_COLUMNS = ("dice", "iou", "hd95", "asd")
SUMMARY_COLUMNS = ("class", "metric", "n", "mean", "median", "std")


def case_metrics(
    prediction: torch.Tensor,
    reference: torch.Tensor,
    class_names: Sequence[str],
    case: str,
    spacing: Sequence[float] | None = None,
) -> list[dict[str, str | float]]:
    """One row per foreground class for one case.

    Args:
        prediction: label map (*spatial) of integers 0..K-1.
        reference: label map of the same shape.
        class_names: K names; class 0 (background) is not reported.
        case: the case name written in the ``case`` column.
        spacing: physical size of a pixel/voxel along each spatial axis.

    Raises:
        ValueError: when the shapes differ.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {tuple(prediction.shape)} differs from reference {tuple(reference.shape)}")
    num_classes = len(class_names)
    pred = torch.nn.functional.one_hot(prediction.long().cpu(), num_classes).movedim(-1, 0)[None].float()
    ref = torch.nn.functional.one_hot(reference.long().cpu(), num_classes).movedim(-1, 0)[None].float()
    voxel = float(np.prod(spacing)) if spacing is not None else 1.0
    sp = list(spacing) if spacing is not None else None
    dice = compute_dice(pred, ref, include_background=True, ignore_empty=False)[0]
    iou = compute_iou(pred, ref, include_background=True, ignore_empty=False)[0]
    rows: list[dict[str, str | float]] = []
    for c in range(1, num_classes):
        n_pred, n_ref = int(pred[0, c].sum()), int(ref[0, c].sum())
        row: dict[str, str | float] = {"case": case, "class": class_names[c]}
        if n_pred == 0 and n_ref == 0:
            row.update(dice=math.nan, iou=math.nan, hd95=math.nan, asd=math.nan)
        elif n_pred == 0 or n_ref == 0:
            row.update(dice=0.0, iou=0.0, hd95=math.nan, asd=math.nan)
        else:
            p, r = pred[:, [0, c]], ref[:, [0, c]]
            hd = compute_hausdorff_distance(p, r, include_background=False, percentile=95, spacing=sp)
            asd = compute_average_surface_distance(p, r, include_background=False, symmetric=True, spacing=sp)
            row.update(dice=float(dice[c]), iou=float(iou[c]), hd95=float(hd[0, 0]), asd=float(asd[0, 0]))
        row.update(volume_pred=n_pred * voxel, volume_ref=n_ref * voxel)
        rows.append(row)
    return rows


def summarize_cases(rows: Sequence[dict[str, str | float]]) -> list[dict[str, str | float]]:
    """Per class and metric: cases used (non-NaN), mean, median and (population) std."""
    classes = list(dict.fromkeys(str(r["class"]) for r in rows))
    summary: list[dict[str, str | float]] = []
    for name in classes:
        for metric in SCORE_COLUMNS:
            values = np.array([float(r[metric]) for r in rows if r["class"] == name], dtype=float)
            values = values[~np.isnan(values)]
            stats = (values.mean(), np.median(values), values.std()) if values.size else (math.nan,) * 3
            mean, median, std = (float(x) for x in stats)
            summary.append(
                {"class": name, "metric": metric, "n": int(values.size), "mean": mean, "median": median, "std": std}
            )
    return summary


def write_csv(path: Path, rows: Sequence[dict[str, str | float]], columns: Sequence[str]) -> Path:
    """Write ``rows`` with a header; floats with 6 significant digits, NaN as an empty cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return path


def _cell(value: str | float) -> str | float:
    if not isinstance(value, float):
        return value
    return "" if math.isnan(value) else f"{value:.6g}"


def summary_table(summary: Sequence[dict[str, str | float]], title: str = "Test metrics per class") -> Table:
    """A Rich table: one row per class, ``mean ± std (median) n=...`` per metric, NaN cases excluded."""
    table = Table(title=title, caption="mean ± std (median) n=scored cases; empty classes (NaN) excluded")
    table.add_column("class")
    for metric in SCORE_COLUMNS:
        table.add_column(metric, justify="right")
    classes = list(dict.fromkeys(str(s["class"]) for s in summary))
    for name in classes:
        cells = []
        for metric in SCORE_COLUMNS:
            s = next(x for x in summary if x["class"] == name and x["metric"] == metric)
            if s["n"] == 0:
                cells.append("n/a n=0")
            else:
                cells.append(f"{s['mean']:.4f} ± {s['std']:.4f} ({s['median']:.4f}) n={s['n']}")
        table.add_row(name, *cells)
    return table


def print_summary(summary: Sequence[dict[str, str | float]], console: Console | None = None) -> None:
    (console or Console()).print(summary_table(summary))
