"""Matplotlib figures logged to MLflow: validation overlays with error maps, and per-class box plots."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # figures are only written to files; never open a window

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch


def label_colormap(num_classes: int) -> ListedColormap:
    """Transparent background, then tab10 colours for classes 1..K-1."""
    colours = [(0.0, 0.0, 0.0, 0.0)] + [(*plt.get_cmap("tab10")(i % 10)[:3], 0.5) for i in range(num_classes - 1)]
    return ListedColormap(colours)


# Error-map colours: transparent where right, red for false positives, blue for false negatives.
ERROR_COLOURS = ListedColormap([(0.0, 0.0, 0.0, 0.0), (0.9, 0.1, 0.1, 0.8), (0.1, 0.4, 1.0, 0.8)])
FALSE_POSITIVE, FALSE_NEGATIVE = 1, 2


def error_map(reference: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Where a prediction is wrong: :data:`FALSE_POSITIVE` where it labels foreground the reference does not
    have there (including a wrong class), :data:`FALSE_NEGATIVE` where it misses reference foreground
    (predicts background), 0 where it is right. Shapes: two label maps (H, W) -> (H, W) uint8."""
    errors = np.zeros(reference.shape, np.uint8)
    errors[(prediction > 0) & (prediction != reference)] = FALSE_POSITIVE
    errors[(prediction == 0) & (reference > 0)] = FALSE_NEGATIVE
    return errors


def representative_slice(reference: np.ndarray) -> int:
    """Index along the last axis of a (X, Y, Z) label volume with the most foreground (the middle if none)."""
    counts = (reference > 0).reshape(-1, reference.shape[-1]).sum(0)
    return int(counts.argmax()) if counts.any() else reference.shape[-1] // 2


def overlay_figure(
    images: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    names: Sequence[str],
    class_names: Sequence[str],
    title: str = "",
    dice: Sequence[float] | None = None,
) -> Figure:
    """One row per case: image, ground truth, prediction (each over the image) and the error map.

    Args:
        images: 2D arrays (H, W) (first channel or the chosen slice).
        references: label maps (H, W).
        predictions: label maps (H, W).
        names: case names shown on the left.
        class_names: K names (legend colours follow :func:`label_colormap`).
        title: figure title, e.g. the epoch.
        dice: the Dice of each case, shown in the title of its prediction.
    """
    rows = len(images)
    cmap = label_colormap(len(class_names))
    scores = list(dice) if dice is not None else [None] * rows
    fig, axes = plt.subplots(rows, 4, figsize=(12, 3 * rows), squeeze=False)
    for i, (image, ref, pred, name, score) in enumerate(
        zip(images, references, predictions, names, scores, strict=True)
    ):
        panels = (
            (None, cmap, "image"),
            (ref, cmap, "ground truth"),
            (pred, cmap, "prediction" if score is None else f"prediction, Dice {score:.3f}"),
            (error_map(ref, pred), ERROR_COLOURS, "errors"),
        )
        for ax, (overlay, colours, heading) in zip(axes[i], panels, strict=True):
            ax.imshow(image, cmap="gray")
            if overlay is not None:
                ax.imshow(overlay, cmap=colours, vmin=0, vmax=colours.N - 1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(heading, fontsize=9)
        axes[i, 0].set_ylabel(name)
    handles = [Patch(color=cmap(c)[:3], label=n) for c, n in enumerate(class_names) if c > 0]
    handles += [
        Patch(color=ERROR_COLOURS(FALSE_POSITIVE)[:3], label="false positive"),
        Patch(color=ERROR_COLOURS(FALSE_NEGATIVE)[:3], label="false negative"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=max(1, len(handles)))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return fig


def box_plot_figure(rows: Sequence[dict[str, str | float]], metrics: Sequence[str]) -> Figure:
    """One panel per metric (a key of the rows, e.g. ``dice``, ``hd95_mm``) with a box per class over the
    cases and the cases as points; NaN left out."""
    classes = list(dict.fromkeys(str(r["class"]) for r in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        data = []
        for name in classes:
            values = np.array([float(r[metric]) for r in rows if r["class"] == name], dtype=float)
            data.append(values[~np.isnan(values)])
        ax.boxplot(data, tick_labels=classes, showfliers=False)
        for position, values in enumerate(data, start=1):  # every case as a point over its box
            jitter = np.random.default_rng(position).uniform(-0.12, 0.12, values.size)
            ax.scatter(position + jitter, values, s=10, alpha=0.6, color="black")
        if metric in ("dice", "iou"):
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(metric)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig
