"""Matplotlib figures logged to MLflow: validation overlays and per-class box plots."""

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
) -> Figure:
    """One row per case: image, ground truth over the image, prediction over the image.

    Args:
        images: 2D arrays (H, W) (first channel or the chosen slice).
        references: label maps (H, W).
        predictions: label maps (H, W).
        names: case names shown on the left.
        class_names: K names (legend colours follow :func:`label_colormap`).
        title: figure title, e.g. the epoch.
    """
    rows = len(images)
    cmap = label_colormap(len(class_names))
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
    for i, (image, ref, pred, name) in enumerate(zip(images, references, predictions, names, strict=True)):
        for j, (overlay, heading) in enumerate(((None, "image"), (ref, "ground truth"), (pred, "prediction"))):
            ax = axes[i, j]
            ax.imshow(image, cmap="gray")
            if overlay is not None:
                ax.imshow(overlay, cmap=cmap, vmin=0, vmax=len(class_names) - 1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(heading)
        axes[i, 0].set_ylabel(name)
    handles = [Patch(color=cmap(c)[:3], label=n) for c, n in enumerate(class_names) if c > 0]
    fig.legend(handles=handles, loc="lower center", ncol=max(1, len(handles)))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return fig


def box_plot_figure(rows: Sequence[dict[str, str | float]], metrics: Sequence[str] = ("dice", "hd95")) -> Figure:
    """One panel per metric with a box per class over the cases and the cases as points; NaN left out."""
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
