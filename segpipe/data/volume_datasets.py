"""Volume datasets that preprocess a case (or read it from a cache), then run the steps after it.

The steps after preprocessing (for training: pad, crop patches or slices) run with MONAI's metadata
tracking off when ``track_meta=False``: a MetaTensor records every pad and crop so that it can be
inverted, training patches are never inverted, and that bookkeeping was about 40% of the time to draw a
patch from a preprocessed volume (9.4 ms against 5.5 ms per 32x32x16 patch of a 128x128x64 volume,
AMD EPYC; ``benchmarks/cache3d.py`` has the epoch figures). The items are the same either way: the last
steps turn everything into plain tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from monai.data import CacheDataset, Dataset, get_track_meta, set_track_meta
from monai.transforms import apply_transform

from segpipe.data.sampling import seed_sampling
from segpipe.data.sources.layouts import VolumeCase
from segpipe.preprocessing.cache import VolumeCache


@contextmanager
def untracked_metadata() -> Iterator[None]:
    """MONAI transforms return plain tensors instead of MetaTensors inside this block.

    MONAI keeps the switch in one process-wide flag. The datasets below turn it off only around the steps
    after preprocessing, in the process that draws the item (the main one or a DataLoader worker); the
    threads that fill the caches (``VolumeCache.build``, ``CacheDataset``) run before any item is drawn.
    """
    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)


class PreprocessedVolumeDataset(Dataset):
    """``cases[i]`` -> ``transform(preprocess(case))``, the preprocessed item read from ``cache`` when given.

    Args:
        cases: the volume cases.
        preprocess: the deterministic steps ``{"case": case} -> item``; with a cache, run on a miss only.
        transform: the steps after preprocessing (random sampling for training, then tensors); seeded
            per sample when the index carries a seed (see :func:`segpipe.data.sampling.seed_sampling`).
        cache: the disk cache of preprocessed items, or None to preprocess every time.
        track_meta: False runs ``transform`` without MONAI's metadata tracking (see the module docstring).
    """

    def __init__(
        self,
        cases: list[VolumeCase],
        preprocess: Callable[[dict[str, Any]], Mapping[str, Any]],
        transform: Callable[[Any], Any],
        cache: VolumeCache | None = None,
        track_meta: bool = True,
    ) -> None:
        super().__init__([{"case": case} for case in cases], transform)
        self.preprocess = preprocess
        self.cache = cache
        self.track_meta = track_meta

    def _transform(self, index: int) -> Any:
        # CacheDataset's per-item hook (MONAI has no public one): the random steps after the cache run here.
        seed_sampling(self.transform, index)
        case: VolumeCase = self.data[index]["case"]
        if self.cache is not None:
            item = self.cache.get(case, lambda: self.preprocess({"case": case}))
        else:
            item = apply_transform(self.preprocess, {"case": case})
        if self.track_meta:
            return apply_transform(self.transform, item)
        with untracked_metadata():
            return apply_transform(self.transform, item)


class UntrackedCacheDataset(CacheDataset):
    """MONAI's in-memory ``CacheDataset`` (filled when built), whose random steps run without metadata tracking.

    Only the steps from the first random one on run per item (the cache holds everything before them), so
    the whole ``_transform`` may run untracked. The cached item is not copied per item
    (``copy_cache=False``): the random crop and the steps after it write new arrays and never modify
    their input, and the copy of a whole volume and its foreground/background indices per patch cost
    more than the crop.
    """

    def __init__(self, data: list[dict[str, Any]], transform: Callable[[Any], Any], num_workers: int) -> None:
        super().__init__(data, transform, num_workers=num_workers, progress=False, copy_cache=False)

    def _transform(self, index: int) -> Any:
        seed_sampling(self.transform, index)
        with untracked_metadata():
            return super()._transform(index)
