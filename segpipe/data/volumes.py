"""DataModule for 3D volumes (NIfTI, NRRD/MHA/MHD, DICOM series, NumPy) and label volumes, trained on
random patches.

Layouts are found by :mod:`segpipe.data.layouts`, splits made by :mod:`segpipe.data.splits`, the data
checked by :mod:`segpipe.data.checks`, and every case is read through :mod:`segpipe.data.volume_cases`
(and :mod:`segpipe.data.io3d`), so a bad file is reported as a :class:`DataError` naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
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

from segpipe.data.checks import DataChecks, DataReport, check_splits, check_volume_case, expectations
from segpipe.data.dataset_json import DatasetJson
from segpipe.data.layouts import (
    Layout,
    ResolvedLayout,
    VolumeCase,
    dataset_folder,
    discover_cases,
    predict_cases,
    read_declaration,
    resolve_layout,
)
from segpipe.data.splits import SPLITS, read_split_file, split_names
from segpipe.data.volume_cases import LoadCased
from segpipe.errors import DataError

VolumeNormalization = Literal["zscore", "ct", "none"]


# ---- the DataModule --------------------------------------------------------------------------------
class VolumeDataModule(DataChecks, pl.LightningDataModule):
    """3D images and integer label volumes; patches for training, whole volumes for val/test/predict.

    Training items are lists of ``samples_per_volume`` patches cropped from one volume (MONAI's
    multi-sample convention), each ``{"image": (C, *patch_size) float32, "mask": (*patch_size) int64,
    "name": str}``; a training batch therefore holds ``batch_size * samples_per_volume`` patches. A
    ``foreground_fraction`` share of patches is centred on a foreground voxel (label > 0), the rest on
    background (MONAI ``RandCropByPosNegLabeld``); volumes smaller than the patch are zero-padded first.
    Val/test/predict items are whole volumes ``{"image": (C, X, Y, Z), "mask": (X, Y, Z), "name"}``,
    batch size 1, for the task's sliding-window inference (``model.inference_roi``).

    Args:
        root: dataset folder, or a ``.csv``/``.json`` case list (layout ``list``).
        layout: ``auto``, ``images_labels`` (``images/`` + ``labels/`` or ``masks/``), ``nnunet``
            (``imagesTr/`` with ``_0000`` channel suffixes + ``labelsTr/``), ``decathlon`` (the cases
            that ``dataset.json`` lists under ``training``) or ``list`` (a CSV/JSON case list, see
            :mod:`segpipe.data.case_lists`). A ``dataset.json`` in the folder declares the classes and
            channels, and is checked against the data and the model.
        list_file: the case list in ``root`` for layout ``list`` (``auto`` picks ``list`` when it is set).
        val_fraction: share of cases for validation (ignored with ``fold`` or ``split_file``).
        test_fraction: share of cases held out for testing, the same for every fold.
        split_seed: seed of the case-level shuffle and of the folds.
        fold: k-fold cross-validation: fold ``fold`` (0-based) of ``num_folds`` is the val split.
        num_folds: number of cross-validation folds.
        split_file: YAML ``{train: [...], val: [...], test: [...]}`` of case names, relative to the
            dataset folder;
            when set it replaces the seeded split (unlisted cases are not used).
        patch_size: training patch (X, Y, Z) in voxels.
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
        cache: keep decoded, normalised volumes in memory (MONAI ``CacheDataset``); only the random
            patch cropping runs per epoch.
        predict_dir: folder of volumes for ``segpipe predict`` (default for nnU-Net: ``imagesTs/``).

    Raises:
        ValueError: for a patch size that is not 3 positive values, ``samples_per_volume < 1``,
            ``foreground_fraction`` outside [0, 1], ``num_folds < 2``, ``fold`` outside
            0..num_folds-1, or ``ct`` normalisation without a valid window or with ``ct_std <= 0``.
    """

    def __init__(
        self,
        root: str = "data",
        layout: Layout = "auto",
        list_file: str | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        fold: int | None = None,
        num_folds: int = 5,
        split_file: str | None = None,
        patch_size: tuple[int, int, int] = (64, 64, 64),
        samples_per_volume: int = 4,
        foreground_fraction: float = 0.33,
        batch_size: int = 2,
        num_workers: int = 2,
        pin_memory: bool = True,
        normalization: VolumeNormalization = "zscore",
        ct_window: tuple[float, float] | None = None,
        ct_mean: float | None = None,
        ct_std: float | None = None,
        cache: bool = False,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        if len(patch_size) != 3 or min(patch_size) < 1:
            raise ValueError(f"patch_size must be 3 positive sizes (X, Y, Z), got {list(patch_size)}")
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
        self.list_file = list_file
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
        self.cache = cache
        self.predict_dir = predict_dir
        self.datasets: dict[str, Dataset] = {}

    # ---- discovery ---------------------------------------------------------------------------------
    def resolved_layout(self) -> ResolvedLayout:
        """The layout in use (see :func:`segpipe.data.layouts.resolve_layout`)."""
        return resolve_layout(self.root, self.layout, self.list_file)

    def declaration(self) -> DatasetJson | None:
        """The dataset's ``dataset.json`` (classes, channels), or None.

        Raises:
            DataError: when it is invalid.
        """
        return read_declaration(self.root)

    def _discover(self) -> tuple[list[VolumeCase], list[DataError]]:
        return discover_cases(self.root, self.layout, self.list_file)

    def _split(self, cases: list[VolumeCase]) -> dict[str, list[VolumeCase]]:
        by_name = {c.name: c for c in cases}
        if self.split_file is not None:
            names = read_split_file(dataset_folder(self.root) / self.split_file, list(by_name))
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
        return predict_cases(self.root, self.layout, self.predict_dir, self.list_file)

    # ---- validation --------------------------------------------------------------------------------
    def report(self, num_classes: int | None = None, in_channels: int | None = None, stage: str = "fit") -> DataReport:
        """Read every file of the dataset (or of the predict cases) and report every problem found.

        Problems: those of :func:`segpipe.data.checks.check_volume_case` for each case, unpaired files,
        empty splits that ``stage`` needs, an invalid ``dataset.json`` or one that disagrees with the
        data or the model. ``num_classes``/``in_channels`` default to what ``dataset.json`` declares
        (unchecked without it; channel counts must then agree across cases).
        """
        try:
            declared = self.declaration()
        except DataError:
            declared = None  # reported by discovery
        expected, problems = expectations(num_classes, in_channels, declared)
        class_names = declared.class_names if declared is not None else None
        try:
            if stage == "predict":
                splits = {"predict": self.predict_cases()}
            else:
                cases, found = self._discover()
                problems += found
                splits = self._split(cases)
        except DataError as err:
            return DataReport([*problems, err], class_names=class_names)
        return check_splits(self.root, splits, check_volume_case, expected, stage, problems, class_names)

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
        """The random training steps after preprocessing: pad to the patch and crop patches."""
        return [
            SpatialPadd(["image", "mask"], spatial_size=self.patch_size),
            FgBgToIndicesd("mask"),
            # The first random step: CacheDataset caches everything before it.
            RandCropByPosNegLabeld(
                ["image", "mask"],
                label_key="mask",
                spatial_size=self.patch_size,
                pos=self.foreground_fraction,
                neg=1.0 - self.foreground_fraction,
                num_samples=self.samples_per_volume,
                fg_indices_key="mask_fg_indices",
                bg_indices_key="mask_bg_indices",
            ),
        ]

    def transforms(self, train: bool) -> Compose:
        """The MONAI pipeline: :meth:`preprocessing`, then for training :meth:`sampling`, then tensors."""
        to_tensors: list[Transform] = [
            SqueezeDimd("mask", dim=0, allow_missing_keys=True),
            EnsureTyped("image", dtype=torch.float32, track_meta=False),
            EnsureTyped("mask", dtype=torch.int64, track_meta=False, allow_missing_keys=True),
        ]
        steps = self.preprocessing() + (self.sampling() if train else [])
        return Compose([*steps, *to_tensors])

    def _dataset(self, cases: list[VolumeCase], train: bool) -> Dataset:
        data = [{"case": case} for case in cases]
        if self.cache:
            return CacheDataset(data, self.transforms(train), num_workers=max(1, self.num_workers), progress=False)
        return Dataset(data, self.transforms(train))

    # ---- Lightning hooks ---------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "predict":
            self.datasets["predict"] = self._dataset(self.predict_cases(), train=False)
            return
        splits = self.cases()
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, SPLITS)
        for split in needed:
            self.datasets[split] = self._dataset(splits[split], train=split == "train")

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle and len(self.datasets[split]) > batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", 1, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", 1, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", 1, shuffle=False)
