"""The preprocessing plan: every decision that turns a case's files into a network input, in one plain record.

A DataModule resolves its plan from its arguments and the dataset fingerprint (the training cases' median
spacing, CT foreground statistics, 2D pixel statistics); the planner of a later release will write the same
record to YAML. The disk cache of preprocessed volumes is keyed on :meth:`PreprocessingPlan.output_settings`,
so a new field that changes the preprocessed output changes the key without any list to keep in step.
Fields marked :data:`SAMPLING` only shape the random training samples drawn from a preprocessed case.

Plain Python only (no torch, no MONAI): the plan is read by tools that do not train.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# The key a resolved plan is stored under: in a VolumeDataModule's checkpoint state, and in the metadata
# of an exported network (segpipe export -> segpipe predict --onnx).
PLAN_KEY = "preprocessing_plan"
# Field metadata of the decisions that do not change the preprocessed volume (not in the cache key).
SAMPLING = {"sampling": True}


@dataclass(frozen=True)
class PreprocessingPlan:
    """Every preprocessing decision, resolved (no ``median``, no statistics left to compute).

    Attributes:
        orientation: axis codes volumes are reoriented to (``RAS``), or None for the file's voxel order.
        spacing: target voxel size (3,) in mm, or None (no resampling).
        interpolation_order: spline order for resampling images (labels: nearest neighbour).
        crop_nonzero: crop to the box of non-zero voxels.
        crop_margin: voxels kept around that box (one value or one per axis).
        normalization: the intensity scheme (volumes: ``zscore``, ``ct``, ``none``; 2D images: also
            ``minmax``, ``fixed``, ``dataset``).
        ct_window: fixed clipping window ``[lo, hi]`` for ``ct``.
        ct_percentiles: clipping percentiles ``[lo, hi]`` for ``ct``.
        ct_statistics: ``dataset`` or ``volume``: where ``ct`` takes its percentiles and mean/std from.
        ct_mean: fixed mean after clipping (wins over the statistics).
        ct_std: fixed standard deviation after clipping.
        intensity_statistics: the training foreground's per-channel ``ct_clip`` ``[[lo, hi], ...]``,
            ``ct_mean`` and ``ct_std`` (``ct_statistics: dataset``); empty otherwise.
        mean: per-channel mean of 2D ``fixed``/``dataset`` normalisation.
        std: per-channel standard deviation of 2D ``fixed``/``dataset`` normalisation.
        patch_size: training window in voxels (in-plane for slices).
        training_mode: ``patches`` (3D network) or ``slices`` (2D network on volume slices).
        slice_axis: the volume axis slices are taken along.
    """

    orientation: str | None = "RAS"
    spacing: list[float] | None = None
    interpolation_order: int = 1
    crop_nonzero: bool = False
    crop_margin: int | list[int] = 0
    normalization: str = "zscore"
    ct_window: list[float] | None = None
    ct_percentiles: list[float] | None = None
    ct_statistics: str = "volume"
    ct_mean: float | None = None
    ct_std: float | None = None
    intensity_statistics: dict[str, list[Any]] = field(default_factory=dict)
    mean: list[float] | None = None
    std: list[float] | None = None
    patch_size: list[int] | None = field(default=None, metadata=SAMPLING)
    training_mode: str = field(default="patches", metadata=SAMPLING)
    slice_axis: int = field(default=2, metadata=SAMPLING)

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain lists, numbers and strings (YAML/JSON ready)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessingPlan:
        """The plan :meth:`to_dict` wrote (missing fields take their defaults).

        Raises:
            ValueError: naming keys that are not fields of the plan.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown preprocessing plan keys {unknown}; known: {sorted(names)}")
        return cls(**data)

    def output_settings(self) -> dict[str, Any]:
        """The fields that change the preprocessed output (all but :data:`SAMPLING` ones): the cache key."""
        plain = self.to_dict()
        return {f.name: plain[f.name] for f in fields(self) if not f.metadata.get("sampling")}
