"""Intensity normalisation of volumes (MONAI transforms): nnU-Net's CT scheme, per-volume z-score (MR), none.

``ct`` clips to a window, then z-scores. The window is a fixed ``ct_window`` (HU) or the ``ct_percentiles``
of the intensities; the percentiles and the mean/std come from the training set's foreground
(``ct_statistics: dataset``, nnU-Net; computed by :mod:`segpipe.preprocessing.fingerprint`) or from each volume
(``volume``); an explicit ``ct_mean``/``ct_std`` wins over both.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import ClipIntensityPercentilesd, MapTransform, NormalizeIntensityd, Transform

VolumeNormalization = Literal["zscore", "ct", "none"]
CTStatistics = Literal["dataset", "volume"]


class ClipIntensityd(MapTransform):
    """Clip channel c of each ``keys`` array (C, *spatial) to ``[lower[c], upper[c]]`` (one value: all channels).

    Hand-written because MONAI's clipping transforms take one window for all channels
    (``ScaleIntensityRange``) or compute percentiles per image (``ClipIntensityPercentiles``); dataset
    percentiles differ per channel.
    """

    def __init__(self, keys: KeysCollection, lower: Sequence[float], upper: Sequence[float]) -> None:
        super().__init__(keys)
        self.lower = np.asarray(lower, np.float32).reshape(-1, 1, 1, 1)
        self.upper = np.asarray(upper, np.float32).reshape(-1, 1, 1, 1)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            value = out[key]
            if isinstance(value, torch.Tensor):
                lower = torch.as_tensor(self.lower, device=value.device)
                out[key] = torch.clamp(value, lower, torch.as_tensor(self.upper, device=value.device))
            else:
                out[key] = np.clip(value, self.lower, self.upper).astype(np.float32, copy=False)
        return out


def normalization_steps(
    mode: VolumeNormalization,
    window: Sequence[float] | None = None,
    percentiles: Sequence[float] | None = None,
    statistics: CTStatistics = "volume",
    mean: float | None = None,
    std: float | None = None,
    dataset: Mapping[str, Any] | None = None,
) -> list[Transform]:
    """The transforms of ``item["image"]`` for a normalisation mode.

    Args:
        mode: ``zscore`` (per volume and channel), ``ct`` or ``none``.
        window: fixed clipping window ``[lo, hi]`` for ``ct``.
        percentiles: clipping percentiles ``[lo, hi]`` (0-100) for ``ct``, instead of ``window``.
        statistics: ``dataset``: percentiles and mean/std from ``dataset``; ``volume``: from each volume.
        mean: fixed mean after clipping (with ``std``), over ``statistics``.
        std: fixed standard deviation after clipping.
        dataset: ``{"ct_clip": [[lo, hi] per channel], "ct_mean": [...], "ct_std": [...]}`` for
            ``statistics: dataset`` (see :func:`segpipe.preprocessing.fingerprint.foreground_intensity_statistics`).

    Raises:
        ValueError: for ``ct`` without exactly one of ``window``/``percentiles``, or ``dataset``
            statistics that are missing.
    """
    if mode == "none":
        return []
    if mode == "zscore":
        return [NormalizeIntensityd("image", channel_wise=True)]
    if (window is None) == (percentiles is None):
        raise ValueError("normalization 'ct' needs one of ct_window or ct_percentiles")
    from_dataset = statistics == "dataset"

    def of_dataset(key: str) -> Any:
        if not dataset or key not in dataset:
            raise ValueError(f"ct_statistics 'dataset' needs the training set's {key!r}")
        return dataset[key]

    steps: list[Transform]
    if window is not None:
        steps = [ClipIntensityd("image", [window[0]], [window[1]])]
    elif from_dataset:
        clip = np.asarray(of_dataset("ct_clip"), np.float64)
        steps = [ClipIntensityd("image", clip[:, 0], clip[:, 1])]
    else:
        lower, upper = percentiles  # type: ignore[misc]
        steps = [ClipIntensityPercentilesd("image", lower=lower, upper=upper, channel_wise=True)]
    if mean is not None and std is not None:
        steps.append(NormalizeIntensityd("image", subtrahend=mean, divisor=std))
    elif from_dataset:
        mean_c, std_c = list(of_dataset("ct_mean")), list(of_dataset("ct_std"))
        steps.append(NormalizeIntensityd("image", subtrahend=mean_c, divisor=std_c, channel_wise=True))
    else:
        steps.append(NormalizeIntensityd("image", channel_wise=True))
    return steps


def check_ct_settings(
    mode: VolumeNormalization,
    window: Sequence[float] | None,
    percentiles: Sequence[float] | None,
    mean: float | None,
    std: float | None,
) -> None:
    """Refuse CT settings that cannot work, before any volume is read.

    Raises:
        ValueError: for ``ct`` without exactly one valid window (``lo < hi``) or percentile pair
            (``0 <= lo < hi <= 100``), ``std <= 0``, or only one of ``mean``/``std``.
    """
    if mode == "ct":
        if window is None and percentiles is None:
            raise ValueError("normalization 'ct' needs ct_window [lo, hi] with lo < hi, or ct_percentiles [lo, hi]")
        if window is not None and percentiles is not None:
            raise ValueError(f"set ct_window ({list(window)}) or ct_percentiles ({list(percentiles)}), not both")
        if window is not None and (len(window) != 2 or window[0] >= window[1]):
            raise ValueError(f"normalization 'ct' needs ct_window [lo, hi] with lo < hi, got {list(window)}")
        bad_percentiles = percentiles is not None and (
            len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100
        )
        if bad_percentiles:
            raise ValueError(f"ct_percentiles must be [lo, hi] with 0 <= lo < hi <= 100, got {list(percentiles)}")
    if std is not None and std <= 0:
        raise ValueError(f"ct_std must be > 0, got {std}")
    if (mean is None) != (std is None):
        raise ValueError("set both ct_mean and ct_std, or neither (per-volume statistics)")
