"""Prediction writer: one mask per input, same name; NIfTI or DICOM-SEG for volumes, PNG for 2D images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from segpipe.data.sources.layouts import VolumeCase
from segpipe.errors import DataError, SegpipeError
from segpipe.inference.volume_writer import (
    PROBABILITIES_SUFFIX,
    probabilities_output,
    restore_prediction,
    write_nifti_outputs,
    write_volume_prediction,
)
from segpipe.io.atomic import atomic_path
from segpipe.io.images import write_mask
from segpipe.io.volumes import is_dicom_series
from segpipe.preprocessing.geometry import GEOMETRY_KEY

VolumeFormat = Literal["auto", "nifti", "dicom_seg"]
_VOLUMES_ONLY = "--predict_writer.format dicom_seg writes volumes; 2D images are written as PNG (format auto)"
_NOT_DICOM = (
    "is not a DICOM series: --predict_writer.format dicom_seg needs DICOM series inputs (auto: NIfTI for the rest)"
)


class MaskWriter(BasePredictionWriter):
    """Write each prediction during ``segpipe predict``, named after its input.

    Volumes (batches with a ``geometry`` record, from :class:`segpipe.data.VolumeDataModule`) become
    ``output_dir/<case>.nii.gz`` on the input's grid with the input's header (see
    :mod:`segpipe.inference.volume_writer`), or, for a DICOM series input, a DICOM Segmentation
    ``output_dir/<case>.dcm`` referencing the series (see :mod:`segpipe.inference.dicom_seg`); 2D
    images become ``output_dir/<stem>.png``.

    Args:
        output_dir: folder for the masks (created if missing).
        save_probabilities: also write the class probabilities: ``<case>_probabilities.nii.gz``
            ((X, Y, Z, K) float32, on the input's grid) for volumes (DICOM series too), ``<stem>_probabilities.npz``
            (array ``probabilities``, (K, H, W) float32) for images.
        format: the volume masks' format: ``auto`` (DICOM-SEG for DICOM series inputs, NIfTI for the
            others), ``nifti``, or ``dicom_seg`` (every input must be a DICOM series).

    Raises:
        ValueError: for an unknown ``format``.
    """

    def __init__(
        self, output_dir: str = "predictions", save_probabilities: bool = False, format: VolumeFormat = "auto"
    ) -> None:
        super().__init__(write_interval="batch")
        if format not in get_args(VolumeFormat):
            raise ValueError(f"format must be one of {', '.join(get_args(VolumeFormat))}, got {format!r}")
        self.output_dir = Path(output_dir)
        self.save_probabilities = save_probabilities
        self.format = format

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """With ``format: dicom_seg``, refuse the data module's inputs that are not DICOM series before any
        is predicted (without a data module that lists them, each input is checked when it is written).

        Raises:
            SegpipeError: when the data module predicts 2D images.
            DataError: naming the first input that is not a DICOM series.
        """
        predict_cases = getattr(trainer.datamodule, "predict_cases", None)
        if self.format != "dicom_seg" or not callable(predict_cases):
            return
        cases = predict_cases()
        if not all(isinstance(case, VolumeCase) for case in cases):
            raise SegpipeError(_VOLUMES_ONLY)
        for case in cases:
            if not is_dicom_series(case.images[0]):
                raise DataError(case.images[0], _NOT_DICOM)

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
                if self._writes_dicom_seg(geometry["source"]):
                    self._write_dicom_seg(name, probabilities, geometry, pl_module.class_names)
                else:
                    write_volume_prediction(self.output_dir, name, probabilities, geometry, self.save_probabilities)
            return
        if self.format == "dicom_seg":
            raise SegpipeError(_VOLUMES_ONLY)
        for name, mask in zip(names, prediction["mask"].cpu().numpy(), strict=True):
            write_mask(self.output_dir / f"{name}.png", mask)
        if self.save_probabilities:
            for name, probabilities in zip(names, prediction["probabilities"].float().cpu().numpy(), strict=True):
                _save_npz(self.output_dir / f"{name}{PROBABILITIES_SUFFIX}.npz", probabilities)

    def _writes_dicom_seg(self, source: str) -> bool:
        """Whether the mask of the input ``source`` is written as DICOM-SEG (else NIfTI).

        Raises:
            DataError: with ``format: dicom_seg``, for a ``source`` that is not a DICOM series.
        """
        if self.format == "nifti":
            return False
        dicom = is_dicom_series(source)
        if self.format == "dicom_seg" and not dicom:
            raise DataError(source, _NOT_DICOM)
        return dicom

    def _write_dicom_seg(
        self, name: str, probabilities: torch.Tensor, geometry: dict[str, Any], class_names: Sequence[str]
    ) -> None:
        """``<name>.dcm`` and, with ``save_probabilities``, the probabilities as NIfTI (DICOM-SEG holds labels)."""
        # Imported here: highdicom takes over a second to import, which every other segpipe command would pay.
        from segpipe.inference.dicom_seg import SEG_SUFFIX, write_dicom_seg

        restored, labels = restore_prediction(probabilities, geometry)
        write_dicom_seg(self.output_dir / f"{name}{SEG_SUFFIX}", labels, geometry, class_names)
        if self.save_probabilities:
            write_nifti_outputs([probabilities_output(self.output_dir, name, restored)], geometry)


def _save_npz(path: Path, probabilities: np.ndarray) -> None:
    """Write ``probabilities`` to ``path`` atomically (never a partial file)."""
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, probabilities=probabilities)
