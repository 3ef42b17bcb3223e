"""DataModule for 3D volumes (NIfTI, NRRD/MHA/MHD, NumPy) and label volumes, trained on random patches or slices.

Layouts are found by :mod:`segpipe.data.layouts`, splits made by :mod:`segpipe.data.splits`, and every
case is read through :mod:`segpipe.data.volume_cases` (and :mod:`segpipe.data.io3d`), so a bad file is
reported as a :class:`DataError` naming it. Preprocessed volumes may be cached in memory or on disk
(:mod:`segpipe.data.cache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import (
    Compose,
    EnsureTyped,
    FgBgToIndicesd,
    NormalizeIntensityd,
    RandCropByPosNegLabeld,
    ScaleIntensityRanged,
    SpatialPadd,
    SqueezeDimd,
    Transform,
)

from segpipe.data.cache import CachedVolumeDataset, VolumeCache
from segpipe.data.layouts import Layout, ResolvedLayout, VolumeCase, discover_cases, predict_cases, resolve_layout
from segpipe.data.splits import SPLITS, read_split_file, split_names
from segpipe.data.volume_cases import LoadCased, load_case
from segpipe.distributed import loader_sampling
from segpipe.errors import DataError, SegpipeError

VolumeNormalization = Literal["zscore", "ct", "none"]
CacheMode = Literal["none", "memory", "disk"]
TrainingMode = Literal["patches", "slices"]
# Splits each Lightning stage reads (prepare_data caches these); without a trainer, all of them.
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}


# ---- the DataModule --------------------------------------------------------------------------------
class VolumeDataModule(pl.LightningDataModule):
    """3D images and integer label volumes; patches or slices for training, whole volumes for val/test/predict.

    Training items are lists of ``samples_per_volume`` patches cropped from one volume (MONAI's
    multi-sample convention), each ``{"image": (C, *patch_size) float32, "mask": (*patch_size) int64,
    "name": str}``; a training batch therefore holds ``batch_size * samples_per_volume`` patches. A
    ``foreground_fraction`` share of patches is centred on a foreground voxel (label > 0), the rest on
    background (MONAI ``RandCropByPosNegLabeld``); volumes smaller than the patch are zero-padded first.
    With ``training_mode: slices`` (for a 2D network, ``model.spatial_dims: 2``) the patches are 2D:
    ``patch_size`` is the in-plane size of a window one slice thick along ``slice_axis``, so items are
    ``{"image": (C, H, W), "mask": (H, W)}`` and foreground oversampling picks slices with foreground.
    Val/test/predict items are whole volumes ``{"image": (C, X, Y, Z), "mask": (X, Y, Z), "name"}``,
    batch size 1, for the task's sliding-window inference (``model.inference_roi``), or slice by slice
    for a 2D network; metrics and per-case reports are therefore per volume. Splits are made per case,
    so the slices of one volume are all in one split.

    Args:
        root: dataset folder.
        layout: ``auto``, ``images_labels`` (``images/`` + ``labels/`` or ``masks/``) or ``nnunet``
            (``imagesTr/`` with ``_0000`` channel suffixes + ``labelsTr/``).
        val_fraction: share of cases for validation (ignored with ``fold`` or ``split_file``).
        test_fraction: share of cases held out for testing, the same for every fold.
        split_seed: seed of the case-level shuffle and of the folds.
        fold: k-fold cross-validation: fold ``fold`` (0-based) of ``num_folds`` is the val split.
        num_folds: number of cross-validation folds.
        split_file: YAML ``{train: [...], val: [...], test: [...]}`` of case names, relative to ``root``;
            when set it replaces the seeded split (unlisted cases are not used).
        patch_size: training patch (X, Y, Z) in voxels; with ``training_mode: slices`` the in-plane size
            (the two axes other than ``slice_axis``, in order).
        samples_per_volume: patches cropped from each volume each time it is read.
        foreground_fraction: share of patches centred on foreground (0.33 as in nnU-Net).
        batch_size: volumes per training batch (each contributes ``samples_per_volume`` patches).
        num_workers: DataLoader worker processes (also threads that fill the cache).
        pin_memory: page-lock batches for faster host-to-GPU copies.
        normalization: ``zscore`` (per volume and channel, nnU-Net's MR scheme), ``ct`` (clip to
            ``ct_window`` then z-score with ``ct_mean``/``ct_std``, or per volume when they are unset) or
            ``none``.
        ct_window: intensity window ``[lo, hi]`` for ``normalization: ct`` (e.g. HU ``[-1000, 1000]``).
        ct_mean: dataset mean after clipping, for ``normalization: ct``.
        ct_std: dataset standard deviation after clipping, for ``normalization: ct``.
        cache: where preprocessed volumes (the output of :meth:`preprocessing`) are kept so that only the
            random sampling runs per epoch: ``none``; ``memory`` (MONAI ``CacheDataset``, filled at setup,
            one copy per process; ``true`` means this); ``disk`` (:mod:`segpipe.data.cache`: one file
            per case in ``cache_dir``, built once in :meth:`prepare_data`, reused across epochs and
            runs, rebuilt when a source file or the preprocessing settings change; safe with several
            workers and DDP processes). Val/test volumes are cached too; predict inputs are not.
        cache_dir: folder of the disk cache (default ``<root>/.segpipe_cache``; set it when the dataset
            folder is read-only). Several datasets and settings may share one.
        training_mode: ``patches`` (3D network) or ``slices`` (2D network on slices of the volumes).
        slice_axis: volume axis (0, 1 or 2: X, Y or Z) that slices are taken along with
            ``training_mode: slices``; 2 (z: axial slices of RAS volumes) by default. It must equal the
            task's ``slice_axis``, which scores val/test volumes slice by slice.
        predict_dir: folder of volumes for ``segpipe predict`` (default for nnU-Net: ``imagesTs/``).

    Raises:
        ValueError: for a patch size that is not 3 positive values (2 with ``training_mode: slices``),
            ``samples_per_volume < 1``, ``foreground_fraction`` outside [0, 1], ``num_folds < 2``,
            ``fold`` outside 0..num_folds-1, ``slice_axis`` outside 0..2, or ``ct`` normalisation
            without a valid window or with ``ct_std <= 0``.
    """

    def __init__(
        self,
        root: str = "data",
        layout: Layout = "auto",
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        fold: int | None = None,
        num_folds: int = 5,
        split_file: str | None = None,
        patch_size: Sequence[int] = (64, 64, 64),
        samples_per_volume: int = 4,
        foreground_fraction: float = 0.33,
        batch_size: int = 2,
        num_workers: int = 2,
        pin_memory: bool = True,
        normalization: VolumeNormalization = "zscore",
        ct_window: tuple[float, float] | None = None,
        ct_mean: float | None = None,
        ct_std: float | None = None,
        cache: CacheMode | bool = "none",
        cache_dir: str | None = None,
        training_mode: TrainingMode = "patches",
        slice_axis: int = 2,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        if training_mode not in ("patches", "slices"):
            raise ValueError(f"training_mode must be 'patches' or 'slices', got {training_mode!r}")
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2 (X, Y or Z), got {slice_axis}")
        dims = 2 if training_mode == "slices" else 3
        if len(patch_size) != dims or min(patch_size) < 1:
            shape = "in-plane (H, W) for training_mode 'slices'" if dims == 2 else "(X, Y, Z)"
            raise ValueError(f"patch_size must be {dims} positive sizes {shape}, got {list(patch_size)}")
        if cache not in (True, False, "none", "memory", "disk"):
            raise ValueError(f"cache must be 'none', 'memory' or 'disk', got {cache!r}")
        if samples_per_volume < 1:
            raise ValueError(f"samples_per_volume must be >= 1, got {samples_per_volume}")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        if num_folds < 2:
            raise ValueError(f"num_folds must be >= 2, got {num_folds}")
        if fold is not None and not 0 <= fold < num_folds:
            raise ValueError(f"fold must be in 0..{num_folds - 1} (num_folds={num_folds}), got {fold}")
        if normalization == "ct" and (ct_window is None or len(ct_window) != 2 or ct_window[0] >= ct_window[1]):
            raise ValueError(f"normalization 'ct' needs ct_window [lo, hi] with lo < hi, got {ct_window}")
        if ct_std is not None and ct_std <= 0:
            raise ValueError(f"ct_std must be > 0, got {ct_std}")
        if (ct_mean is None) != (ct_std is None):
            raise ValueError("set both ct_mean and ct_std, or neither (per-volume statistics)")
        self.root = Path(root)
        self.layout = layout
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.fold = fold
        self.num_folds = num_folds
        self.split_file = split_file
        self.patch_size = tuple(int(s) for s in patch_size)
        self.samples_per_volume = samples_per_volume
        self.foreground_fraction = foreground_fraction
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.normalization = normalization
        self.ct_window = ct_window
        self.ct_mean = ct_mean
        self.ct_std = ct_std
        self.cache: CacheMode = {True: "memory", False: "none"}.get(cache, cache)  # type: ignore[arg-type]
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.root / ".segpipe_cache"
        self.training_mode = training_mode
        self.slice_axis = slice_axis
        self.predict_dir = predict_dir
        self.datasets: dict[str, Dataset] = {}
        self._volume_cache: VolumeCache | None = None

    # ---- discovery ---------------------------------------------------------------------------------
    def resolved_layout(self) -> ResolvedLayout:
        """The layout in use (see :func:`segpipe.data.layouts.resolve_layout`)."""
        return resolve_layout(self.root, self.layout)

    def _discover(self) -> tuple[list[VolumeCase], list[DataError]]:
        return discover_cases(self.root, self.layout)

    def _split(self, cases: list[VolumeCase]) -> dict[str, list[VolumeCase]]:
        by_name = {c.name: c for c in cases}
        if self.split_file is not None:
            names = read_split_file(self.root / self.split_file, list(by_name))
        else:
            try:
                names = split_names(
                    by_name, self.val_fraction, self.test_fraction, self.split_seed, self.fold, self.num_folds
                )
            except ValueError as err:
                raise DataError(self.root, str(err)) from None
        return {split: [by_name[n] for n in names[split]] for split in SPLITS}

    def cases(self) -> dict[str, list[VolumeCase]]:
        """The cases of each split (``train``, ``val``, ``test``; possibly empty lists).

        Raises:
            DataError: for a missing folder, unpaired files, bad channel names, a bad split file or an
                empty dataset (the first problem found).
        """
        cases, problems = self._discover()
        if problems:
            raise problems[0]
        return self._split(cases)

    def predict_cases(self) -> list[VolumeCase]:
        """Cases to predict (see :func:`segpipe.data.layouts.predict_cases`)."""
        return predict_cases(self.root, self.layout, self.predict_dir)

    # ---- validation --------------------------------------------------------------------------------
    def check(self, num_classes: int, in_channels: int, stage: str = "fit") -> list[DataError]:
        """Read every file of the dataset (or of the predict folder) and return all problems found.

        Problems: unreadable, empty or non-finite files, unpaired files, image/label shape or affine
        mismatch, labels outside 0..num_classes-1, channel counts other than ``in_channels``, empty
        splits that ``stage`` needs.
        """
        try:
            if stage == "predict":
                splits, problems = {"predict": self.predict_cases()}, []
            else:
                cases, problems = self._discover()
                splits = self._split(cases)
        except DataError as err:
            return [err]
        for split, split_cases in splits.items():
            for case in split_cases:
                try:
                    self._check_case(case, num_classes, in_channels)
                except DataError as err:
                    problems.append(err)
            if not split_cases and split in ("train", "val") and stage in ("fit", "validate"):
                problems.append(DataError(self.root, f"the {split} split is empty"))
            if not split_cases and split == "test" and stage == "test":
                problems.append(DataError(self.root, "the test split is empty"))
        return problems

    def _check_case(self, case: VolumeCase, num_classes: int, in_channels: int) -> None:
        image, label, _ = load_case(case)
        if image.shape[0] != in_channels:
            raise DataError(case.images[0], f"has {image.shape[0]} channels, the model expects {in_channels}")
        if label is None:
            return
        bad = np.unique(label[(label < 0) | (label >= num_classes)])
        if bad.size:
            raise DataError(
                case.label or case.images[0],
                f"labels {bad[:5].tolist()} are outside the {num_classes} classes 0..{num_classes - 1}",
            )

    def validate(self, num_classes: int, in_channels: int, stage: str = "fit") -> None:
        """Raise the first problem :meth:`check` finds, with a count of the others.

        Raises:
            DataError: the first problem, naming its file.
        """
        problems = self.check(num_classes, in_channels, stage)
        if problems:
            first = problems[0]
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise DataError(first.path, first.problem + more)

    # ---- transforms and datasets -------------------------------------------------------------------
    def _normalize(self) -> list[Transform]:
        if self.normalization == "none":
            return []
        if self.normalization == "zscore":
            return [NormalizeIntensityd("image", channel_wise=True)]
        lo, hi = self.ct_window  # type: ignore[misc]
        return [
            # Identity scaling with clip=True: clips intensities to the window.
            ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=lo, b_max=hi, clip=True),
            NormalizeIntensityd(
                "image", subtrahend=self.ct_mean, divisor=self.ct_std, channel_wise=self.ct_mean is None
            ),
        ]

    def preprocessing(self) -> list[Transform]:
        """The deterministic steps from file to training-ready volume: read, then normalise.

        Everything here depends only on the case's files and :meth:`preprocessing_signature`, so its
        output may be cached; random steps belong in :meth:`sampling`.
        """
        return [LoadCased(), *self._normalize()]

    def preprocessing_signature(self) -> dict[str, Any]:
        """Every setting that changes the output of :meth:`preprocessing` (a cache of it is keyed on this)."""
        return {
            "normalization": self.normalization,
            "ct_window": list(self.ct_window) if self.ct_window is not None else None,
            "ct_mean": self.ct_mean,
            "ct_std": self.ct_std,
        }

    def sampling(self) -> list[Transform]:
        """The random training steps after preprocessing: pad to the patch and crop patches (or slices).

        For slices the window is the in-plane ``patch_size`` and one voxel along ``slice_axis`` (padding
        only in-plane), and that axis is squeezed away after the crop.
        """
        window, pad = list(self.patch_size), list(self.patch_size)
        slices = self.training_mode == "slices"
        if slices:
            window.insert(self.slice_axis, 1)
            pad.insert(self.slice_axis, -1)  # non-positive: keep the volume's size along that axis
        steps: list[Transform] = [
            SpatialPadd(["image", "mask"], spatial_size=pad),
            # Padding returns a MetaTensor; foreground/background indices of a NumPy mask are found several
            # times faster (np.nonzero vs torch.nonzero through MetaTensor dispatch), once per volume read.
            EnsureTyped("mask", data_type="numpy", track_meta=False),
            FgBgToIndicesd("mask"),
            # The first random step: CacheDataset caches everything before it.
            RandCropByPosNegLabeld(
                ["image", "mask"],
                label_key="mask",
                spatial_size=window,
                pos=self.foreground_fraction,
                neg=1.0 - self.foreground_fraction,
                num_samples=self.samples_per_volume,
                fg_indices_key="mask_fg_indices",
                bg_indices_key="mask_bg_indices",
            ),
        ]
        if slices:  # (C, ..., 1, ...) -> (C, H, W); the mask keeps its channel axis until to_tensors
            steps.append(SqueezeDimd(["image", "mask"], dim=self.slice_axis + 1))
        return steps

    def after_preprocessing(self, train: bool) -> Compose:
        """What runs on a preprocessed (possibly cached) item: for training :meth:`sampling`, then tensors."""
        to_tensors: list[Transform] = [
            SqueezeDimd("mask", dim=0, allow_missing_keys=True),
            EnsureTyped("image", dtype=torch.float32, track_meta=False),
            EnsureTyped("mask", dtype=torch.int64, track_meta=False, allow_missing_keys=True),
        ]
        return Compose([*(self.sampling() if train else []), *to_tensors])

    def transforms(self, train: bool) -> Compose:
        """The MONAI pipeline: :meth:`preprocessing`, then :meth:`after_preprocessing`."""
        return Compose([*self.preprocessing(), *self.after_preprocessing(train).transforms])

    def volume_cache(self) -> VolumeCache:
        """The disk cache of this dataset's preprocessed volumes (see :mod:`segpipe.data.cache`)."""
        if self._volume_cache is None:
            self._volume_cache = VolumeCache(self.cache_dir, self.preprocessing_signature())
        return self._volume_cache

    def _dataset(self, cases: list[VolumeCase], split: str) -> Dataset:
        train = split == "train"
        data = [{"case": case} for case in cases]
        if self.cache == "memory":
            return CacheDataset(data, self.transforms(train), num_workers=max(1, self.num_workers), progress=False)
        if self.cache == "disk" and split != "predict":
            preprocess = Compose(self.preprocessing())
            return CachedVolumeDataset(cases, self.volume_cache(), preprocess, self.after_preprocessing(train))
        return Dataset(data, self.transforms(train))

    def check_model(self, spatial_dims: int, slice_axis: int = 2) -> None:
        """Refuse a network that does not fit the training mode (3D for patches, 2D for slices).

        Raises:
            SegpipeError: naming the settings to change.
        """
        if self.training_mode == "patches" and spatial_dims != 3:
            raise SegpipeError(
                f"model.spatial_dims {spatial_dims} does not train on 3D patches: set model.spatial_dims 3, "
                "or data.init_args.training_mode slices for a 2D network"
            )
        if self.training_mode == "slices" and spatial_dims != 2:
            raise SegpipeError(f"training_mode 'slices' trains a 2D network, but model.spatial_dims is {spatial_dims}")
        if self.training_mode == "slices" and slice_axis != self.slice_axis:
            raise SegpipeError(
                f"data slice_axis {self.slice_axis} differs from model.slice_axis {slice_axis}: "
                "val/test volumes would be scored on other slices than the training ones"
            )

    # ---- Lightning hooks ---------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """With ``cache: disk``, write the missing or stale cache entries of the splits the stage reads.

        Lightning calls this on one process per node (local rank 0) while the others wait, so the
        cache is built once; the DataLoader workers then only read it. Cases that cannot be read are
        left out (the data check reports them all, and reading them later raises the same error).
        """
        if self.cache != "disk":
            return
        try:
            splits = self._split(self._discover()[0])
        except DataError:
            return  # reported by the data check, or by setup
        state = getattr(self.trainer, "state", None)
        stage = getattr(getattr(state, "fn", None), "value", None)
        cases = [case for split in STAGE_SPLITS.get(stage, SPLITS) for case in splits[split]]
        cache = self.volume_cache()
        missing = sum(not cache.is_fresh(case) for case in cases)
        if missing:
            rank_zero_info(f"segpipe: caching {missing} of {len(cases)} preprocessed volumes in {cache.folder}")
            preprocess = Compose(self.preprocessing())
            cache.build(cases, lambda case: preprocess({"case": case}), threads=max(1, self.num_workers))

    def setup(self, stage: str) -> None:
        if stage == "predict":
            self.datasets["predict"] = self._dataset(self.predict_cases(), "predict")
            return
        splits = self.cases()
        for split in STAGE_SPLITS.get(stage, SPLITS):
            self.datasets[split] = self._dataset(splits[split], split)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        # Training: the same global batches on 1 or N processes for one seed; val/test: every case once
        # across ranks (see segpipe.distributed).
        sampler, drop_last = loader_sampling(self.datasets[split], self.trainer, split, batch_size, shuffle)
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=drop_last,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", 1, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", 1, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", 1, shuffle=False)
