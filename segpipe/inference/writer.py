"""Prediction writer: one integer mask per input image, same stem, PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter

from segpipe.data.io2d import write_mask


class MaskWriter(BasePredictionWriter):
    """Write each predicted mask to ``output_dir/<input stem>.png`` during ``segpipe predict``.

    Args:
        output_dir: folder for the masks (created if missing).
    """

    def __init__(self, output_dir: str = "predictions") -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)

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
        masks = prediction["mask"].cpu().numpy()
        for name, mask in zip(prediction["name"], masks, strict=True):
            write_mask(self.output_dir / f"{name}.png", mask)
