"""The deterministic steps from a volume case's files to a training-ready volume, built from a plan."""

from __future__ import annotations

from monai.transforms import Transform

from segpipe.data.sources.volume_cases import LoadCased
from segpipe.preprocessing.geometry import VolumeGeometryd
from segpipe.preprocessing.intensity import normalization_steps
from segpipe.preprocessing.plan import PreprocessingPlan


def volume_preprocessing(plan: PreprocessingPlan) -> list[Transform]:
    """Read, reorient, crop, resample and normalise as ``plan`` says.

    The steps map ``{"case": VolumeCase}`` to plain data only: ``image`` (C, X, Y, Z) float32, ``mask``
    (1, X, Y, Z) int64 (cases with a label), ``name`` and ``geometry``
    (:mod:`segpipe.preprocessing.geometry`). Their output depends only on the case's files and
    :meth:`PreprocessingPlan.output_settings`, so it may be cached.

    Raises:
        ValueError: for geometry or normalisation settings that cannot work.
    """
    geometry = VolumeGeometryd(
        plan.orientation, plan.spacing, plan.interpolation_order, plan.crop_nonzero, plan.crop_margin
    )
    normalize = normalization_steps(
        plan.normalization,  # type: ignore[arg-type]
        plan.ct_window,
        plan.ct_percentiles,
        plan.ct_statistics,  # type: ignore[arg-type]
        plan.ct_mean,
        plan.ct_std,
        plan.intensity_statistics,
    )
    return [LoadCased(), geometry, *normalize]
