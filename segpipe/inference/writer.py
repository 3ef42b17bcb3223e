"""Prediction writer: one mask per input, same name; NIfTI for volumes, PNG for 2D images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from segpipe.inference.volume_writer import PROBABILITIES_SUFFIX, write_volume_prediction
from segpipe.io.atomic import atomic_path
from segpipe.io.images import write_mask
from segpipe.preprocessing.geometry import GEOMETRY_KEY


class MaskWriter(BasePredictionWriter):
    """Write each prediction during ``segpipe predict``, named after its input.

    Volumes (batches with a ``geometry`` record, from :class:`segpipe.data.VolumeDataModule`) become
    ``output_dir/<case>.nii.gz`` on the input's grid with the input's header (see
    :mod:`segpipe.inference.volume_writer`); 2D images become ``output_dir/<stem>.png``.

    Args:
        output_dir: folder for the masks (created if missing).
        save_probabilities: also write the class probabilities: ``<case>_probabilities.nii.gz``
            ((X, Y, Z, K) float32, on the input's grid) for volumes, ``<stem>_probabilities.npz``
            (array ``probabilities``, (K, H, W) float32) for images.
    """

    def __init__(self, output_dir: str = "predictions", save_probabilities: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.save_probabilities = save_probabilities

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        names = prediction["name"]
        if isinstance(batch, dict) and GEOMETRY_KEY in batch:
            items = zip(names, prediction["probabilities"], batch[GEOMETRY_KEY], strict=True)
            for name, probabilities, geometry in items:
                write_volume_prediction(self.output_dir, name, probabilities, geometry, self.save_probabilities)
            return
        for name, mask in zip(names, prediction["mask"].cpu().numpy(), strict=True):
            write_mask(self.output_dir / f"{name}.png", mask)
        if self.save_probabilities:
            for name, probabilities in zip(names, prediction["probabilities"].float().cpu().numpy(), strict=True):
                _save_npz(self.output_dir / f"{name}{PROBABILITIES_SUFFIX}.npz", probabilities)


def _save_npz(path: Path, probabilities: np.ndarray) -> None:
    """Write ``probabilities`` to ``path`` atomically (never a partial file)."""
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, probabilities=probabilities)
