"""Every N epochs, a panel of fixed validation cases (image, ground truth, prediction) logged to the run."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from segpipe.tracking.logger import mlflow_logger


def fixed_indices(length: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(length)``: the same cases in every run of a dataset."""
    return sorted({int(i) for i in np.linspace(0, length - 1, min(count, length)).round()}) if length else []


class ValidationOverlays(Callback):
    """Log ``figures/overlays/epoch_NNN.png`` every ``every_n_epochs`` epochs and after the last one.

    The cases are spread evenly over the validation set (so every run of a dataset shows the same
    ones). Volumes are shown on the axial slice (last axis) with the most reference foreground.

    Args:
        every_n_epochs: epochs between panels; 0 disables them.
        num_cases: rows of the panel.
    """

    def __init__(self, every_n_epochs: int = 5, num_cases: int = 4) -> None:
        if every_n_epochs < 0 or num_cases < 1:
            raise ValueError(f"every_n_epochs must be >= 0 and num_cases >= 1, got {every_n_epochs}, {num_cases}")
        self.every_n_epochs = every_n_epochs
        self.num_cases = num_cases

    def due(self, trainer: pl.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch >= trainer.max_epochs
        return self.every_n_epochs > 0 and (epoch % self.every_n_epochs == 0 or last)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = mlflow_logger(trainer)
        if trainer.sanity_checking or logger is None or not trainer.is_global_zero or not self.due(trainer):
            return
        loader = trainer.val_dataloaders
        dataset = getattr(loader[0] if isinstance(loader, list) else loader, "dataset", None)
        if dataset is None or not hasattr(dataset, "__len__"):
            return
        # Imported here: matplotlib loads only when a panel is drawn.
        import matplotlib.pyplot as plt

        from segpipe.tracking.figures import overlay_figure, representative_slice

        images, references, predictions, names = [], [], [], []
        with torch.no_grad():
            for index in fixed_indices(len(dataset), self.num_cases):
                sample = dataset[index]
                image = torch.as_tensor(sample["image"])
                logits = pl_module.infer(image[None].to(pl_module.device))
                prediction = logits.argmax(1)[0].cpu().numpy()
                reference = np.asarray(torch.as_tensor(sample["mask"]))
                picture = image[0].float().cpu().numpy()
                if reference.ndim == 3:
                    z = representative_slice(reference)
                    picture, reference, prediction = picture[..., z].T, reference[..., z].T, prediction[..., z].T
                images.append(picture)
                references.append(reference)
                predictions.append(prediction)
                names.append(f"{sample.get('name', index)}")
        figure = overlay_figure(
            images, references, predictions, names, pl_module.class_names, f"epoch {trainer.current_epoch}"
        )
        logger.log_figure(figure, f"figures/overlays/epoch_{trainer.current_epoch:03d}.png")
        plt.close(figure)
