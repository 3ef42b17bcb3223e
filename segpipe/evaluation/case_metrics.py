"""Per-case test metrics (Dice, IoU, HD95, ASD, volumes) and their per-class summary.

Empty classes follow nnU-Net's convention, extended to the distances:

* reference and prediction both empty: every metric is NaN (nothing to score);
* exactly one of them empty: Dice and IoU are 0; HD95 and ASD are NaN (a distance to an empty set is
  undefined), so a missed or hallucinated structure is penalised by the overlap scores only;
* normalised surface Dice (``nsd``, when a tolerance is given) follows Dice: NaN when both are empty, 0 when
  one is;
* NaN values are left out of the mean, median and std, and the summary says how many cases were used.

Distances are in the units of ``spacing`` and their names say which (``hd95_mm``, ``asd_mm``); without a
spacing they are in pixels (``_px``, 2D) or voxels (``_vox``, volumes). Volumes are voxel counts times the
voxel volume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

OVERLAP_SCORES = ("dice", "iou")
DISTANCE_SCORES = ("hd95", "asd")
SURFACE_SCORE = "nsd"
SUMMARY_COLUMNS = ("class", "metric", "n", "mean", "median", "std")

Rows = list[dict[str, str | float]]


def distance_unit(spacing: Sequence[float] | None, spatial_dims: int) -> str:
    """``mm`` when the pixel/voxel size is known, else ``px`` (2D) or ``vox`` (volumes)."""
    if spacing is not None:
        return "mm"
    return "px" if spatial_dims == 2 else "vox"


def score_columns(unit: str, surface: bool = False) -> tuple[str, ...]:
    """The scored columns of a report whose distances are in ``unit``: ``dice, iou, hd95_<unit>, asd_<unit>``,
    then ``nsd`` when ``surface`` (rows scored with a surface tolerance)."""
    return (*OVERLAP_SCORES, *(f"{name}_{unit}" for name in DISTANCE_SCORES), *((SURFACE_SCORE,) if surface else ()))


def case_columns(unit: str, surface: bool = False) -> tuple[str, ...]:
    """The columns of ``test_cases.csv``: case, class, the scores (:func:`score_columns`), the volumes."""
    return ("case", "class", *score_columns(unit, surface), "volume_pred", "volume_ref")


def has_surface_dice(rows: Sequence[dict[str, str | float]]) -> bool:
    """Whether ``rows`` hold the normalised surface Dice column (scored with a tolerance)."""
    return any(SURFACE_SCORE in row for row in rows)


def unit_of(rows: Sequence[dict[str, str | float]]) -> str:
    """The distance unit of rows made by :func:`case_metrics` (``px`` for no rows).

    Raises:
        ValueError: when the rows mix units (cases with and without a known spacing).
    """
    units = {key.removeprefix("hd95_") for row in rows for key in row if key.startswith("hd95_")}
    if len(units) > 1:
        raise ValueError(f"the cases' distances are in different units {sorted(units)}: some lack a spacing")
    return units.pop() if units else "px"


def case_metrics(
    prediction: torch.Tensor,
    reference: torch.Tensor,
    class_names: Sequence[str],
    case: str,
    spacing: Sequence[float] | None = None,
    tolerance: float | None = None,
) -> Rows:
    """One row per foreground class for one case; distances named with their unit (:func:`distance_unit`).

    Args:
        prediction: label map (*spatial) of integers 0..K-1.
        reference: label map of the same shape.
        class_names: K names; class 0 (background) is not reported.
        case: the case name written in the ``case`` column.
        spacing: physical size of a pixel/voxel along each spatial axis.
        tolerance: when given, also the normalised surface Dice (``nsd``, MONAI's ``compute_surface_dice``):
            the share of both boundaries within ``tolerance`` (in the distance unit) of the other.

    Raises:
        ValueError: when the shapes differ.
    """
    # Imported here: MONAI loads only when a test is scored, not when the CLI starts.
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
        compute_surface_dice,
    )

    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {tuple(prediction.shape)} differs from reference {tuple(reference.shape)}")
    num_classes = len(class_names)
    pred = torch.nn.functional.one_hot(prediction.long().cpu(), num_classes).movedim(-1, 0)[None].float()
    ref = torch.nn.functional.one_hot(reference.long().cpu(), num_classes).movedim(-1, 0)[None].float()
    voxel = float(np.prod(spacing)) if spacing is not None else 1.0
    sp = list(spacing) if spacing is not None else None
    unit = distance_unit(spacing, reference.ndim)
    hd95, asd = (f"{name}_{unit}" for name in DISTANCE_SCORES)
    dice = compute_dice(pred, ref, include_background=True, ignore_empty=False)[0]
    iou = compute_iou(pred, ref, include_background=True, ignore_empty=False)[0]
    rows: Rows = []
    for c in range(1, num_classes):
        n_pred, n_ref = int(pred[0, c].sum()), int(ref[0, c].sum())
        row: dict[str, str | float] = {"case": case, "class": class_names[c]}
        nsd: dict[str, float] = {}
        if n_pred == 0 and n_ref == 0:
            row.update({"dice": math.nan, "iou": math.nan, hd95: math.nan, asd: math.nan})
            nsd[SURFACE_SCORE] = math.nan
        elif n_pred == 0 or n_ref == 0:
            row.update({"dice": 0.0, "iou": 0.0, hd95: math.nan, asd: math.nan})
            nsd[SURFACE_SCORE] = 0.0
        else:
            p, r = pred[:, [0, c]], ref[:, [0, c]]
            hd = compute_hausdorff_distance(p, r, include_background=False, percentile=95, spacing=sp)
            sd = compute_average_surface_distance(p, r, include_background=False, symmetric=True, spacing=sp)
            row.update({"dice": float(dice[c]), "iou": float(iou[c]), hd95: float(hd[0, 0]), asd: float(sd[0, 0])})
            if tolerance is not None:
                surface = compute_surface_dice(p, r, [float(tolerance)], include_background=False, spacing=sp)
                nsd[SURFACE_SCORE] = float(surface[0, 0])
        if tolerance is not None:
            row.update(nsd)
        row.update(volume_pred=n_pred * voxel, volume_ref=n_ref * voxel)
        rows.append(row)
    return rows


def spacing_of(batch: dict[str, Any], index: int, spatial_dims: int) -> list[float] | None:
    """Pixel/voxel size of item ``index``: ``batch["spacing"]``, else the affine of a MONAI MetaTensor."""
    if "spacing" in batch:
        return [float(s) for s in torch.as_tensor(batch["spacing"][index]).flatten()]
    affine = getattr(batch["image"], "affine", None)
    if isinstance(affine, torch.Tensor) and affine.ndim == 3:
        return [float(x) for x in affine[index, :spatial_dims, :spatial_dims].double().norm(dim=0)]
    return None


def batch_case_metrics(
    predictions: torch.Tensor,
    batch: dict[str, Any],
    class_names: Sequence[str],
    ignore_index: int | None = None,
) -> list[Rows]:
    """The rows of :func:`case_metrics` for every case of a test batch, one list per case.

    Args:
        predictions: label maps (B, *spatial).
        batch: the batch, with ``mask`` (B, *spatial), ``name`` (B names) and, when known, ``spacing``
            (B, spatial dims) or an ``image`` MetaTensor whose affine gives it.
        class_names: K names; class 0 (background) is not reported.
        ignore_index: label whose pixels are scored as background in both maps.

    Raises:
        ValueError: when a prediction's shape differs from its reference's.
    """
    references = batch["mask"].cpu()
    spatial_dims = references.ndim - 1
    cases = []
    for i, name in enumerate(batch["name"]):
        pred, ref = predictions[i].cpu().clone(), references[i].clone()
        if ignore_index is not None:
            pred[ref == ignore_index] = 0
            ref[ref == ignore_index] = 0
        cases.append(case_metrics(pred, ref, class_names, str(name), spacing_of(batch, i, spatial_dims)))
    return cases


def foreground_dice(prediction: np.ndarray, reference: np.ndarray, num_classes: int) -> float:
    """Dice of one case averaged over the foreground classes present in either map (NaN if none is).

    Args:
        prediction: label map (*spatial) of integers 0..K-1.
        reference: label map of the same shape.
        num_classes: K, background included.
    """
    scores = []
    for c in range(1, num_classes):
        p, r = prediction == c, reference == c
        total = int(p.sum()) + int(r.sum())
        if total:
            scores.append(2.0 * int((p & r).sum()) / total)
    return float(np.mean(scores)) if scores else math.nan


def summarize_cases(rows: Sequence[dict[str, str | float]]) -> list[dict[str, str | float]]:
    """Per class and metric: cases used (non-NaN), mean, median and (population) std.

    Raises:
        ValueError: when the rows mix distance units (:func:`unit_of`).
    """
    classes = list(dict.fromkeys(str(r["class"]) for r in rows))
    metrics = score_columns(unit_of(rows), has_surface_dice(rows))
    summary: list[dict[str, str | float]] = []
    for name in classes:
        for metric in metrics:
            values = np.array([float(r[metric]) for r in rows if r["class"] == name], dtype=float)
            values = values[~np.isnan(values)]
            stats = (values.mean(), np.median(values), values.std()) if values.size else (math.nan,) * 3
            mean, median, std = (float(x) for x in stats)
            summary.append(
                {"class": name, "metric": metric, "n": int(values.size), "mean": mean, "median": median, "std": std}
            )
    return summary
