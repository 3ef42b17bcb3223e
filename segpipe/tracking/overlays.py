"""Panels of fixed validation cases (image, ground truth, prediction, errors) logged to the run.

``figures/overlays/epoch_NNN.png`` every N epochs shows how the predictions evolve; ``overlay_best.png`` at
the artifact root is the panel of the best epoch so far, so MLflow's compare view shows it side by side
for two runs (it compares only files at the root).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from segpipe.evaluation.case_metrics import foreground_dice
from segpipe.tracking.logger import mlflow_logger

BEST_OVERLAY = "overlay_best.png"


def fixed_indices(length: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(length)``: the same cases in every run of a dataset."""
    return sorted({int(i) for i in np.linspace(0, length - 1, min(count, length)).round()}) if length else []


def improves(score: float, best: float | None, mode: str) -> bool:
    """Whether ``score`` beats ``best`` (None: nothing yet) for a checkpoint ``mode`` of ``min`` or ``max``."""
    if best is None:
        return True
    return score < best if mode == "min" else score > best


class ValidationOverlays(Callback):
    """Log ``figures/overlays/epoch_NNN.png`` every ``every_n_epochs`` epochs and after the last one, and
    ``overlay_best.png`` whenever the checkpoint's monitored metric (``val/dice``) improves.

    The cases are spread evenly over the validation set (so every run of a dataset shows the same
    ones). Volumes are shown on the axial slice (last axis) with the most reference foreground; the Dice
    in a panel's title is the whole case's, averaged over the foreground classes. Without a monitored
    metric, ``overlay_best.png`` is the last panel. The best score is kept in checkpoints, so a resumed
    fit replaces the best overlay only when it improves on it.

    Args:
        every_n_epochs: epochs between panels; 0 disables the panels and the best overlay.
        num_cases: rows of the panel.

    Raises:
        ValueError: when ``every_n_epochs`` < 0 or ``num_cases`` < 1.
    """

    def __init__(self, every_n_epochs: int = 5, num_cases: int = 4) -> None:
        if every_n_epochs < 0 or num_cases < 1:
            raise ValueError(f"every_n_epochs must be >= 0 and num_cases >= 1, got {every_n_epochs}, {num_cases}")
        self.every_n_epochs = every_n_epochs
        self.num_cases = num_cases
        self.best_score: float | None = None

    def due(self, trainer: pl.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch >= trainer.max_epochs
        return self.every_n_epochs > 0 and (epoch % self.every_n_epochs == 0 or last)

    def monitored(self, trainer: pl.Trainer) -> tuple[str, float] | None:
        """The checkpoint's monitor and this epoch's value of it, when both are known."""
        monitor = getattr(trainer.checkpoint_callback, "monitor", None)
        score = trainer.callback_metrics.get(monitor) if monitor else None
        return None if score is None else (monitor, float(score))

    def improved(self, trainer: pl.Trainer) -> bool:
        """Whether this epoch is the best so far by the checkpoint's monitor (recorded when it is)."""
        monitored = self.monitored(trainer)
        if monitored is None:
            return self.due(trainer)
        if not improves(monitored[1], self.best_score, getattr(trainer.checkpoint_callback, "mode", "max")):
            return False
        self.best_score = monitored[1]
        return True

    # on_validation_end, not on_validation_epoch_end: callbacks' epoch-end hooks run before the task's, which
    # logs the epoch's val/dice.
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = mlflow_logger(trainer)
        if trainer.sanity_checking or logger is None or not trainer.is_global_zero or self.every_n_epochs == 0:
            return
        due, best = self.due(trainer), self.improved(trainer)
        if not (due or best):
            return
        loader = trainer.val_dataloaders
        dataset = getattr(loader[0] if isinstance(loader, list) else loader, "dataset", None)
        if dataset is None or not hasattr(dataset, "__len__"):
            return
        import matplotlib.pyplot as plt  # imported here: matplotlib loads only when a panel is drawn

        monitored = self.monitored(trainer)
        title = f"epoch {trainer.current_epoch}" + (f", {monitored[0]} {monitored[1]:.4f}" if monitored else "")
        figure = self.draw(dataset, pl_module, title)
        if due:
            logger.log_figure(figure, f"figures/overlays/epoch_{trainer.current_epoch:03d}.png")
        if best:
            logger.log_figure(figure, BEST_OVERLAY)
        plt.close(figure)

    def draw(self, dataset: Any, pl_module: pl.LightningModule, title: str) -> Any:
        """The panel (a matplotlib Figure) of the fixed cases of ``dataset``, predicted by ``pl_module``."""
        from segpipe.tracking.figures import overlay_figure, representative_slice

        images, references, predictions, names, scores = [], [], [], [], []
        with torch.no_grad():
            for index in fixed_indices(len(dataset), self.num_cases):
                sample = dataset[index]
                image = torch.as_tensor(sample["image"])
                logits = pl_module.infer(image[None].to(pl_module.device))
                prediction = logits.argmax(1)[0].cpu().numpy()
                reference = np.asarray(torch.as_tensor(sample["mask"]))
                scores.append(foreground_dice(prediction, reference, len(pl_module.class_names)))
                picture = image[0].float().cpu().numpy()
                if reference.ndim == 3:
                    z = representative_slice(reference)
                    picture, reference, prediction = picture[..., z].T, reference[..., z].T, prediction[..., z].T
                images.append(picture)
                references.append(reference)
                predictions.append(prediction)
                names.append(f"{sample.get('name', index)}")
        return overlay_figure(images, references, predictions, names, pl_module.class_names, title, scores)

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
