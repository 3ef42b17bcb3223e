"""The intensity statistics of 2D DataModules: typed (``fixed``) or computed from the images (``dataset``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segpipe.data.datasets import training_statistics
from segpipe.data.sources.pairing import Case
from segpipe.preprocessing.normalize import Normalization
from segpipe.preprocessing.plan import PreprocessingPlan


class ImageStatistics(ABC):
    """Mixin for 2D DataModules with ``normalization``, ``mean`` and ``std`` arguments: :meth:`statistics`
    and :meth:`plan`. Subclasses name the images the ``dataset`` statistics come from."""

    root: Path
    normalization: Normalization
    mean: Sequence[float] | None
    std: Sequence[float] | None
    hparams: Any
    _statistics: dict[str, list[float]] | None = None

    @abstractmethod
    def statistics_cases(self) -> list[Case]:
        """The cases whose images give the ``dataset`` mean and std (the training split)."""

    def statistics(self) -> dict[str, list[float]]:
        """The per-channel ``{"mean": [...], "std": [...]}`` that normalisation uses: with ``normalization:
        dataset`` computed once from every pixel of :meth:`statistics_cases` (the same on every DDP rank:
        the same files in the same order; also written to ``hparams["mean"]``/``["std"]``, so checkpoints
        hold them), with ``fixed`` the configured values; else empty.

        Raises:
            DataError: when the images cannot be found or read.
        """
        if self._statistics is None:
            if self.normalization == "dataset":
                self._statistics = training_statistics(self.statistics_cases(), self.root)
                # Checkpoints then hold the values the weights were trained with (for export and inference).
                self.hparams.update(self._statistics)
            elif self.normalization == "fixed" and self.mean is not None and self.std is not None:
                self._statistics = {"mean": list(self.mean), "std": list(self.std)}
            else:
                self._statistics = {}
        return self._statistics

    def plan(self) -> PreprocessingPlan:
        """The preprocessing decisions of 2D images: the normalisation and its :meth:`statistics` (images keep
        their pixel grid: no orientation, spacing or crop).

        Raises:
            DataError: when ``normalization: dataset`` cannot read the images.
        """
        statistics = self.statistics()
        return PreprocessingPlan(
            orientation=None, normalization=self.normalization, mean=statistics.get("mean"), std=statistics.get("std")
        )
