"""What a model expects of its data, and the hook through which a DataModule checks it.

The CLI only wires: it asks the task for :class:`ModelRequirements` and hands them to any DataModule that
implements :class:`CheckedDataModule`, which refuses data the model cannot use before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ModelRequirements:
    """The data a network takes: classes, input channels, 2D or 3D, and the slice axis of a 2D network
    scoring volumes slice by slice."""

    num_classes: int
    in_channels: int
    spatial_dims: int = 2
    slice_axis: int = 2


@runtime_checkable
class CheckedDataModule(Protocol):
    """A DataModule that validates its files (and builds caches) for a model before a stage runs."""

    def check_for(self, model: ModelRequirements, stage: str) -> None:
        """Prepare and validate the data ``stage`` reads for ``model``.

        Raises:
            SegpipeError: the first problem (a :class:`~segpipe.errors.DataError` names its file).
        """
