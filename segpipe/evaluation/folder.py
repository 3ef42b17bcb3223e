"""Score a folder of predicted label maps against a folder of reference labels (``segpipe evaluate``).

Files are paired by case name, the file name without its suffix (``case_01.nii.gz`` and ``case_01.nrrd`` are
one case), so predictions and labels may be stored in different formats: NIfTI, NRRD, MHA/MHD (volumes,
scored in mm) or PNG/TIFF (2D masks, scored in pixels). Every case is read and checked (pairs, shapes, the
volumes' voxel-to-world affines) before anything is written, so a mistake is one error, never a wrong number.
The scores are those of ``segpipe test`` (:func:`segpipe.evaluation.case_metrics.case_metrics`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segpipe.errors import DataError, SegpipeError
from segpipe.evaluation.case_metrics import Rows, case_metrics, has_surface_dice, score_columns, unit_of
from segpipe.evaluation.report import CaseReport, write_report
from segpipe.io.atomic import atomic_path, write_text
from segpipe.io.images import MASK_SUFFIXES, read_mask
from segpipe.io.volumes import ITK_SUFFIXES, NIFTI_SUFFIXES, VolumeMeta, read_label

LABEL_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES + MASK_SUFFIXES
# Largest difference (mm) between the entries of a prediction's and its label's affine that counts as equal:
# formats store the geometry as float32 (NIfTI) or as decimal text (NRRD), so exact equality is too strict.
GEOMETRY_TOLERANCE_MM = 1e-3
REPORT_PREFIX = "evaluation"
SUMMARY_JSON = "evaluation_summary.json"
BOX_PLOTS = "evaluation_boxplots.png"


@dataclass(frozen=True)
class LabelMap:
    """One read label file: ``array`` (H, W) or (X, Y, Z) int64, and ``meta`` (None for 2D masks)."""

    path: Path
    array: np.ndarray
    meta: VolumeMeta | None


def label_suffix(path: Path) -> str | None:
    """The label suffix ``path`` ends with (``.nii.gz`` counts as one, case-insensitive), or None."""
    name = path.name.lower()
    return next((s for s in LABEL_SUFFIXES if name.endswith(s)), None)


def cases_in(folder: Path) -> dict[str, Path]:
    """The label files of ``folder`` by case name (hidden files and other suffixes are left out).

    Raises:
        DataError: naming ``folder`` when it is not a folder or holds no label file, or naming a file
            whose case name another file of the folder has too.
    """
    if not folder.is_dir():
        raise DataError(folder, "folder does not exist" if not folder.exists() else "expected a folder of label files")
    cases: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        suffix = label_suffix(path)
        if path.name.startswith(".") or not path.is_file() or suffix is None:
            continue
        case = path.name[: -len(suffix)]
        if case in cases:
            raise DataError(path, f"case {case!r} has two files in this folder (also {cases[case].name})")
        cases[case] = path
    if not cases:
        raise DataError(folder, f"holds no label file ({', '.join(LABEL_SUFFIXES)})")
    return cases


def pair_cases(predictions: Path, labels: Path) -> list[tuple[str, Path, Path]]:
    """(case, prediction file, label file) for every case, in case-name order.

    Raises:
        DataError: naming the first label without a prediction, or prediction without a label.
    """
    pred, ref = cases_in(predictions), cases_in(labels)
    for case, path in ref.items():
        if case not in pred:
            raise DataError(path, f"has no prediction {case}.* in {predictions}")
    for case, path in pred.items():
        if case not in ref:
            raise DataError(path, f"has no label {case}.* in {labels}")
    return [(case, pred[case], ref[case]) for case in sorted(ref)]


def read_label_map(path: Path) -> LabelMap:
    """Read a 2D mask (PNG/TIFF) or a label volume with its geometry.

    Raises:
        DataError: naming ``path``, for what :func:`~segpipe.io.images.read_mask` and
            :func:`~segpipe.io.volumes.read_label` refuse, or for negative labels.
    """
    if path.name.lower().endswith(MASK_SUFFIXES):
        array, meta = read_mask(path), None
    else:
        array, meta = read_label(path)
    if array.size and array.min() < 0:
        raise DataError(path, f"holds negative label {int(array.min())}; labels must be class indices 0..K-1")
    return LabelMap(path, array, meta)


def check_geometry(pred: LabelMap, ref: LabelMap, tolerance: float = GEOMETRY_TOLERANCE_MM) -> None:
    """Refuse a prediction that is not on its label's grid: another shape, a 2D mask against a volume, or
    (volumes) an affine that differs by more than ``tolerance`` mm in any entry.

    Raises:
        DataError: naming the prediction and the label.
    """
    where = f"does not match label {ref.path}"
    if pred.array.shape != ref.array.shape:
        raise DataError(pred.path, f"{where}: shape {pred.array.shape} vs {ref.array.shape}")
    if (pred.meta is None) != (ref.meta is None):
        raise DataError(pred.path, f"{where}: one is a 2D mask, the other a volume")
    if pred.meta is not None and ref.meta is not None:
        difference = float(np.abs(pred.meta.affine - ref.meta.affine).max())
        if difference > tolerance:
            spacing = f"spacing {_mm(pred.meta.spacing)} vs {_mm(ref.meta.spacing)}"
            raise DataError(pred.path, f"{where}: affines differ by up to {difference:.4g} mm ({spacing})")


def _mm(spacing: Sequence[float]) -> str:
    return "x".join(f"{s:.4g}" for s in spacing)


def class_names_for(maps: Sequence[LabelMap], names: Sequence[str] | None) -> list[str]:
    """``names`` (background first) checked against the labels found, or ``class0 .. class<max>`` for the
    largest label in ``maps``.

    Raises:
        DataError: naming the first file holding a label that ``names`` has no name for.
        SegpipeError: for fewer than two names.
    """
    if names is not None:
        if len(names) < 2:
            raise SegpipeError(f"--labels needs the background and at least one class, got {list(names)}")
        for item in maps:
            top = int(item.array.max(initial=0))
            if top >= len(names):
                raise DataError(item.path, f"holds label {top} but only {len(names)} class names are given")
        return list(names)
    top = max(int(item.array.max(initial=0)) for item in maps)
    return [f"class{k}" for k in range(max(top, 1) + 1)]


def score_folder(
    predictions: Path,
    labels: Path,
    class_names: Sequence[str] | None = None,
    tolerance: float = 1.0,
) -> Rows:
    """Per case and foreground class: Dice, IoU, HD95, ASD and normalised surface Dice (``nsd``).

    Args:
        predictions: folder of predicted label maps.
        labels: folder of reference label maps, one per prediction, same case names.
        class_names: K names, background first (default: ``class<k>`` up to the largest label found).
        tolerance: the surface Dice tolerance, in mm for volumes and pixels for 2D masks.

    Raises:
        DataError: for unpaired files, an unreadable file, a geometry mismatch or an unnamed label.
    """
    pairs = [(case, read_label_map(p), read_label_map(r)) for case, p, r in pair_cases(predictions, labels)]
    for _, pred, ref in pairs:
        check_geometry(pred, ref)
    names = class_names_for([m for _, p, r in pairs for m in (p, r)], class_names)
    rows: Rows = []
    for case, pred, ref in pairs:
        spacing = ref.meta.spacing if ref.meta is not None else None
        prediction, reference = torch.from_numpy(pred.array), torch.from_numpy(ref.array)
        rows.extend(case_metrics(prediction, reference, names, case, spacing, tolerance))
    try:
        unit_of(rows)
    except ValueError:
        raise SegpipeError(f"{predictions} mixes 2D masks (pixels) and volumes (mm); score them apart") from None
    return rows


def default_output(predictions: Path) -> Path:
    """Where the report goes without ``--out``: ``evaluation/`` beside the predictions folder."""
    return predictions.resolve().parent / "evaluation"


@dataclass(frozen=True)
class EvaluationReport:
    """The written evaluation: the CSV report, the summary JSON and the box plots."""

    report: CaseReport
    summary_json: Path
    box_plots: Path


def summary_document(report: CaseReport, tolerance: float) -> dict[str, object]:
    """The summary as JSON: ``{"unit", "nsd_tolerance", "classes": {class: {metric: {n, mean, median, std}}}}``;
    NaN (no scored case) as null."""
    classes: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for s in report.summary:
        stats = {key: _json_number(s[key]) for key in ("n", "mean", "median", "std")}
        classes.setdefault(str(s["class"]), {})[str(s["metric"])] = stats
    return {"unit": report.unit, "nsd_tolerance": tolerance, "classes": classes}


def _json_number(value: str | float) -> float | int | None:
    number = float(value)
    if math.isnan(number):
        return None
    return int(number) if isinstance(value, int) else number


def write_evaluation(folder: Path, rows: Rows, tolerance: float) -> EvaluationReport:
    """Write ``evaluation_cases.csv``, ``evaluation_summary.csv``, ``evaluation_summary.json`` and
    ``evaluation_boxplots.png`` into ``folder``, each atomically."""
    import matplotlib.pyplot as plt

    from segpipe.tracking.figures import box_plot_figure

    report = write_report(folder, rows, prefix=REPORT_PREFIX)
    document = json.dumps(summary_document(report, tolerance), indent=2) + "\n"
    summary_json = write_text(folder / SUMMARY_JSON, document)
    figure = box_plot_figure(rows, score_columns(report.unit, has_surface_dice(rows)))
    box_plots = folder / BOX_PLOTS
    try:
        with atomic_path(box_plots) as tmp:
            figure.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(figure)
    return EvaluationReport(report, summary_json, box_plots)
