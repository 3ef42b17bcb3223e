"""DataModule for 3D volumes (NIfTI, NRRD/MHA/MHD, DICOM series, NumPy) and label volumes, trained on
random patches or slices.

Layouts are found by :mod:`segpipe.data.sources.layouts`, splits made by :mod:`segpipe.data.splits`, the data
checked by :mod:`segpipe.data.checks`, and every case is read through :mod:`segpipe.data.sources.volume_cases`
(and :mod:`segpipe.io.volumes`), so a bad file is reported as a :class:`DataError` naming it.
Preprocessed volumes may be cached in memory or on disk (:mod:`segpipe.preprocessing.cache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from monai.data import CacheDataset, DataLoader, Dataset, list_data_collate
from monai.transforms import (
    Compose,
    DeleteItemsd,
    EnsureTyped,
    FgBgToIndicesd,
    RandCropByPosNegLabeld,
    SpatialPadd,
    SqueezeDimd,
    Transform,
)

from segpipe.data.checks import DataChecks, DataReport, check_splits, check_volume_case, expectations
from segpipe.data.requirements import ModelRequirements
from segpipe.data.sources.dataset_json import DatasetJson
from segpipe.data.sources.layouts import (
    Layout,
    ResolvedLayout,
    VolumeCase,
    dataset_folder,
    discover_cases,
    predict_cases,
    read_declaration,
    resolve_layout,
)
from segpipe.data.sources.volume_cases import LoadCased
from segpipe.data.splits import SPLITS, read_split_file, split_names
from segpipe.data.volume_datasets import PreprocessedVolumeDataset, UntrackedCacheDataset
from segpipe.distributed import loader_sampling
from segpipe.errors import DataError, SegpipeError
from segpipe.preprocessing.cache import VolumeCache
from segpipe.preprocessing.fingerprint import foreground_intensity_statistics, median_spacing
from segpipe.preprocessing.geometry import GEOMETRY_KEY, VolumeGeometryd, spacing_of
from segpipe.preprocessing.intensity import CTStatistics, VolumeNormalization, normalization_steps

__all__ = ["VolumeDataModule", "VolumeNormalization", "collate_volumes"]

CacheMode = Literal["none", "memory", "disk"]
TrainingMode = Literal["patches", "slices"]
# Splits each Lightning stage reads (prepare_data caches these); without a trainer, all of them.
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}


# ---- the DataModule --------------------------------------------------------------------------------
class VolumeDataModule(DataChecks, pl.LightningDataModule):
    """3D images and integer label volumes; patches or slices for training, whole volumes for val/test/predict.

    Every case is first preprocessed (deterministic, :meth:`preprocessing`): read, reoriented to
    ``orientation`` (RAS), cropped to its non-zero region (``crop_nonzero``), resampled to ``spacing``
    (by default the training cases' median voxel size; images by spline ``interpolation_order``, labels
    by nearest neighbour) and normalised. What each step did is kept in ``item["geometry"]`` (see
    :mod:`segpipe.preprocessing.geometry`) so that ``segpipe predict`` writes masks on the input's grid.

    Training items are lists of ``samples_per_volume`` patches cropped from one volume (MONAI's
    multi-sample convention), each ``{"image": (C, *patch_size) float32, "mask": (*patch_size) int64,
    "name": str}``; a training batch therefore holds ``batch_size * samples_per_volume`` patches. A
    ``foreground_fraction`` share of patches is centred on a foreground voxel (label > 0), the rest on
    background (MONAI ``RandCropByPosNegLabeld``); volumes smaller than the patch are zero-padded first.
    With ``training_mode: slices`` (for a 2D network, ``model.spatial_dims: 2``) the patches are 2D:
    ``patch_size`` is the in-plane size of a window one slice thick along ``slice_axis``, so items are
    ``{"image": (C, H, W), "mask": (H, W)}`` and foreground oversampling picks slices with foreground.
    Val/test/predict items are whole preprocessed volumes ``{"image": (C, X, Y, Z), "mask": (X, Y, Z),
    "name", "geometry"}``, batch size 1, for the task's sliding-window inference (``model.inference_roi``),
    or slice by slice for a 2D network; metrics and per-case reports are therefore per volume. Their
    batches hold ``geometry`` as a list of records and ``spacing`` (B, 3) in mm. Splits are made per
    case, so the slices of one volume are all in one split.

    Args:
        root: dataset folder, or a ``.csv``/``.json`` case list (layout ``list``).
        layout: ``auto``, ``images_labels`` (``images/`` + ``labels/`` or ``masks/``), ``nnunet``
            (``imagesTr/`` with ``_0000`` channel suffixes + ``labelsTr/``), ``decathlon`` (the cases
            that ``dataset.json`` lists under ``training``) or ``list`` (a CSV/JSON case list, see
            :mod:`segpipe.data.sources.case_lists`). A ``dataset.json`` in the folder declares the classes and
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
        patch_size: training patch (X, Y, Z) in voxels; with ``training_mode: slices`` the in-plane size
            (the two axes other than ``slice_axis``, in order).
        samples_per_volume: patches cropped from each volume each time it is read.
        foreground_fraction: share of patches centred on foreground (0.33 as in nnU-Net).
        batch_size: volumes per training batch (each contributes ``samples_per_volume`` patches).
        num_workers: DataLoader worker processes (also threads that fill the cache).
        pin_memory: page-lock batches for faster host-to-GPU copies.
        orientation: axis codes the volumes are reoriented to (``RAS``: voxel axes along right, anterior,
            superior); ``null`` keeps each file's voxel order.
        spacing: target voxel size in mm along the (reoriented) axes: ``median`` (the training cases'
            median, from the headers, as nnU-Net), ``[sx, sy, sz]``, or ``null`` (no resampling).
        interpolation_order: spline order for resampling images, 0-5 (1: trilinear; 3: cubic B-spline,
            nnU-Net's, slower). Labels are always resampled by nearest neighbour.
        crop_nonzero: crop each volume to the box of voxels that are non-zero in any channel (nnU-Net);
            predictions outside it are background.
        crop_margin: voxels kept around that box (one value or one per axis).
        normalization: ``zscore`` (per volume and channel, nnU-Net's MR scheme), ``ct`` (clip to
            ``ct_window`` or ``ct_percentiles``, then z-score) or ``none``.
        ct_window: fixed intensity window ``[lo, hi]`` for ``normalization: ct`` (e.g. HU ``[-1000, 1000]``).
        ct_percentiles: clip to these percentiles ``[lo, hi]`` (e.g. ``[0.5, 99.5]``) instead, of the
            training foreground or of each volume (``ct_statistics``).
        ct_statistics: where the percentiles and the z-score's mean/std come from: ``volume`` (each
            volume's own voxels) or ``dataset`` (foreground voxels, label > 0, sampled from the training
            cases: nnU-Net's CT scheme).
        ct_mean: dataset mean after clipping, for ``normalization: ct`` (wins over ``ct_statistics``).
        ct_std: dataset standard deviation after clipping, for ``normalization: ct``.
        cache: where preprocessed volumes (the output of :meth:`preprocessing`) are kept so that only the
            random sampling runs per epoch: ``none``; ``memory`` (MONAI ``CacheDataset``, filled at setup,
            one copy per process; ``true`` means this); ``disk`` (:mod:`segpipe.preprocessing.cache`: one file
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
            without one valid window or percentile pair or with ``ct_std <= 0``, bad axis codes, spacings
            or interpolation order, or a negative margin.
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
        patch_size: Sequence[int] = (64, 64, 64),
        samples_per_volume: int = 4,
        foreground_fraction: float = 0.33,
        batch_size: int = 2,
        num_workers: int = 2,
        pin_memory: bool = True,
        orientation: str | None = "RAS",
        spacing: Literal["median"] | tuple[float, float, float] | None = "median",
        interpolation_order: int = 1,
        crop_nonzero: bool = False,
        crop_margin: int | tuple[int, int, int] = 0,
        normalization: VolumeNormalization = "zscore",
        ct_window: tuple[float, float] | None = None,
        ct_percentiles: tuple[float, float] | None = None,
        ct_statistics: CTStatistics = "volume",
        ct_mean: float | None = None,
        ct_std: float | None = None,
        cache: CacheMode | bool = "none",
        cache_dir: str | None = None,
        training_mode: TrainingMode = "patches",
        slice_axis: int = 2,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        # Plain values only (checkpoints are read with weights_only=True): paths and lists, no objects.
        self.save_hyperparameters()
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
        if normalization == "ct":
            _check_ct_clip(ct_window, ct_percentiles)
        if spacing is not None and spacing != "median" and (len(spacing) != 3 or min(spacing) <= 0):
            raise ValueError(f"spacing must be 'median', 3 positive sizes in mm or null, got {spacing}")
        # Validates orientation, interpolation order and margin now rather than in a worker.
        VolumeGeometryd(orientation, None, interpolation_order, crop_nonzero, crop_margin)
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
        self.orientation = orientation
        self.spacing = spacing
        self.interpolation_order = interpolation_order
        self.crop_nonzero = crop_nonzero
        self.crop_margin = crop_margin
        self.normalization = normalization
        self.ct_window = ct_window
        self.ct_percentiles = ct_percentiles
        self.ct_statistics = ct_statistics
        self.ct_mean = ct_mean
        self.ct_std = ct_std
        self.cache: CacheMode = {True: "memory", False: "none"}.get(cache, cache)  # type: ignore[arg-type]
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.root / ".segpipe_cache"
        self.training_mode = training_mode
        self.slice_axis = slice_axis
        self.predict_dir = predict_dir
        self.datasets: dict[str, Dataset] = {}
        self._statistics: dict[str, Any] | None = None
        self._volume_cache: VolumeCache | None = None

    # ---- discovery ---------------------------------------------------------------------------------
    def resolved_layout(self) -> ResolvedLayout:
        """The layout in use (see :func:`segpipe.data.sources.layouts.resolve_layout`)."""
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
        """Cases to predict (see :func:`segpipe.data.sources.layouts.predict_cases`)."""
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

    # ---- dataset statistics -------------------------------------------------------------------------
    def dataset_statistics(self) -> dict[str, Any]:
        """Values computed once from the training split that preprocessing uses (cached; part of
        :meth:`preprocessing_signature`; worth logging with the run).

        Returns:
            ``{"median_spacing": [sx, sy, sz]}`` (mm, along the reoriented axes) when ``spacing: median``,
            and ``{"ct_clip": [[lo, hi], ...], "ct_mean": [...], "ct_std": [...]}`` (one entry per channel)
            for ``normalization: ct`` with ``ct_statistics: dataset``; empty when nothing is needed.

        Raises:
            DataError: when the training split cannot be found or read, or holds no foreground for the
                CT statistics.
        """
        if self._statistics is not None:
            return self._statistics
        statistics: dict[str, Any] = {}
        needs_median = self.spacing == "median"
        fixed_ct = self.ct_window is not None and self.ct_mean is not None
        needs_ct = self.normalization == "ct" and self.ct_statistics == "dataset" and not fixed_ct
        if needs_median or needs_ct:
            uses = " and ".join(
                use
                for use, needed in (("spacing: median", needs_median), ("ct_statistics: dataset", needs_ct))
                if needed
            )
            try:
                train = self.cases()["train"]
            except DataError as err:
                raise DataError(err.path, f"{err.problem} (the training cases are needed for {uses})") from None
            if not train:
                raise DataError(self.root, f"the train split is empty; {uses} needs training cases")
            if needs_median:
                statistics["median_spacing"] = median_spacing(train, self.orientation)
            if needs_ct:
                statistics |= foreground_intensity_statistics(train, self.ct_percentiles, self.ct_window)
        self._statistics = statistics
        return statistics

    def target_spacing(self) -> list[float] | None:
        """The voxel size (mm) volumes are resampled to, or None (see ``spacing``)."""
        if self.spacing is None:
            return None
        if self.spacing == "median":
            return list(self.dataset_statistics()["median_spacing"])
        return [float(s) for s in self.spacing]

    # ---- transforms and datasets -------------------------------------------------------------------
    def preprocessing(self) -> list[Transform]:
        """The deterministic steps from file to training-ready volume: read, reorient, crop, resample,
        normalise.

        Everything here depends only on the case's files and :meth:`preprocessing_signature`, so its
        output may be cached; random steps belong in :meth:`sampling`. The output holds plain data only:
        ``image`` (C, X, Y, Z) float32, ``mask`` (1, X, Y, Z) int64 (cases with a label), ``name`` and
        ``geometry`` (:mod:`segpipe.preprocessing.geometry`).
        """
        geometry = VolumeGeometryd(
            self.orientation, self.target_spacing(), self.interpolation_order, self.crop_nonzero, self.crop_margin
        )
        normalize = normalization_steps(
            self.normalization,
            self.ct_window,
            self.ct_percentiles,
            self.ct_statistics,
            self.ct_mean,
            self.ct_std,
            self.dataset_statistics(),
        )
        return [LoadCased(), geometry, *normalize]

    def preprocessing_signature(self) -> dict[str, Any]:
        """Every setting that changes the output of :meth:`preprocessing` (a cache of it is keyed on this),
        including the :meth:`dataset_statistics` it uses. JSON-serialisable."""
        return {
            "orientation": self.orientation,
            "spacing": self.spacing if self.spacing in (None, "median") else [float(s) for s in self.spacing],
            "target_spacing": self.target_spacing(),
            "interpolation_order": self.interpolation_order,
            "crop_nonzero": self.crop_nonzero,
            "crop_margin": self.crop_margin if isinstance(self.crop_margin, int) else list(self.crop_margin),
            "normalization": self.normalization,
            "ct_window": list(self.ct_window) if self.ct_window is not None else None,
            "ct_percentiles": list(self.ct_percentiles) if self.ct_percentiles is not None else None,
            "ct_statistics": self.ct_statistics,
            "ct_mean": self.ct_mean,
            "ct_std": self.ct_std,
            "dataset_statistics": self.dataset_statistics(),
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
        # Training patches do not need the geometry record (it is for mapping predictions back).
        steps = [DeleteItemsd(GEOMETRY_KEY), *self.sampling()] if train else []
        return Compose([*steps, *to_tensors])

    def transforms(self, train: bool) -> Compose:
        """The MONAI pipeline: :meth:`preprocessing`, then :meth:`after_preprocessing`."""
        return Compose([*self.preprocessing(), *self.after_preprocessing(train).transforms])

    def volume_cache(self) -> VolumeCache:
        """The disk cache of this dataset's preprocessed volumes (see :mod:`segpipe.preprocessing.cache`)."""
        if self._volume_cache is None:
            self._volume_cache = VolumeCache(self.cache_dir, self.preprocessing_signature())
        return self._volume_cache

    def _dataset(self, cases: list[VolumeCase], split: str) -> Dataset:
        train = split == "train"
        data = [{"case": case} for case in cases]
        if self.cache == "memory":
            workers = max(1, self.num_workers)
            if train:  # training items keep no geometry: the patches may be drawn without metadata
                return UntrackedCacheDataset(data, self.transforms(train), num_workers=workers)
            return CacheDataset(data, self.transforms(train), num_workers=workers, progress=False)
        cache = self.volume_cache() if self.cache == "disk" and split != "predict" else None
        preprocess = Compose(self.preprocessing())
        after = self.after_preprocessing(train)
        return PreprocessedVolumeDataset(cases, preprocess, after, cache, track_meta=not train)

    def check_for(self, model: ModelRequirements, stage: str) -> None:
        """Refuse a network that does not fit the training mode, then build and validate the data."""
        self.check_model(model.spatial_dims, model.slice_axis)
        super().check_for(model, stage)

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
            collate_fn=list_data_collate if shuffle else collate_volumes,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", 1, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", 1, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", 1, shuffle=False)


def _check_ct_clip(window: tuple[float, float] | None, percentiles: tuple[float, float] | None) -> None:
    if window is None and percentiles is None:
        raise ValueError("normalization 'ct' needs ct_window [lo, hi] with lo < hi, or ct_percentiles [lo, hi]")
    if window is not None and percentiles is not None:
        raise ValueError(f"set ct_window ({list(window)}) or ct_percentiles ({list(percentiles)}), not both")
    if window is not None and (len(window) != 2 or window[0] >= window[1]):
        raise ValueError(f"normalization 'ct' needs ct_window [lo, hi] with lo < hi, got {list(window)}")
    if percentiles is not None and (len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100):
        raise ValueError(f"ct_percentiles must be [lo, hi] with 0 <= lo < hi <= 100, got {list(percentiles)}")


def collate_volumes(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate whole-volume items; ``geometry`` stays a list of per-item records (numpy, not moved to the
    device) and ``spacing`` (B, 3) float32 gives their voxel size in mm (for per-case reports)."""
    records = [item.get(GEOMETRY_KEY) for item in items]
    batch = list_data_collate([{k: v for k, v in item.items() if k != GEOMETRY_KEY} for item in items])
    if all(record is not None for record in records):
        batch[GEOMETRY_KEY] = records
        spacings = [spacing_of(record["resampled_affine"]) for record in records]
        batch["spacing"] = torch.as_tensor(np.stack(spacings), dtype=torch.float32)
    return batch
