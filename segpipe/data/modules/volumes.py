"""DataModule for 3D volumes (NIfTI, NRRD/MHA/MHD, DICOM series, NumPy) and label volumes, trained on
random patches or slices. It composes, and holds no logic of its own beyond wiring:

- discovery: :mod:`segpipe.data.sources.layouts` (every case read through
  :mod:`segpipe.data.sources.volume_cases`, so a bad file is a :class:`DataError` naming it);
- splits: :func:`segpipe.data.splits.named_splits`;
- checks: :mod:`segpipe.data.checks`;
- preprocessing: a :class:`~segpipe.preprocessing.plan.PreprocessingPlan` resolved from the arguments and
  the fingerprint (:mod:`segpipe.preprocessing.fingerprint`), turned into steps by
  :func:`segpipe.preprocessing.steps.volume_preprocessing`, cached in memory or on disk
  (:mod:`segpipe.preprocessing.cache`, keyed on the plan);
- sampling: :class:`segpipe.data.sampling.PatchSampling`;
- loaders: :class:`~segpipe.data.modules.base.SplitDataModule` (DDP samplers, resumable training loader).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_info
from monai.data import CacheDataset, Dataset, list_data_collate
from monai.transforms import Compose, Transform

from segpipe.data.checks import DataChecks, DataReport, check_splits, check_volume_case, expectations
from segpipe.data.modules.base import SplitDataModule
from segpipe.data.requirements import ModelRequirements
from segpipe.data.sampling import PatchSampling, TrainingMode, collate_volumes
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
from segpipe.data.splits import SPLITS, STAGE_SPLITS, check_folds, named_splits
from segpipe.data.volume_datasets import PreprocessedVolumeDataset, UntrackedCacheDataset
from segpipe.errors import DataError, SegpipeError
from segpipe.preprocessing.cache import VolumeCache
from segpipe.preprocessing.fingerprint import foreground_intensity_statistics, median_spacing
from segpipe.preprocessing.geometry import VolumeGeometryd
from segpipe.preprocessing.intensity import CTStatistics, VolumeNormalization, check_ct_settings
from segpipe.preprocessing.plan import PLAN_KEY, PreprocessingPlan
from segpipe.preprocessing.steps import volume_preprocessing
from segpipe.transforms.augment3d import resolve_augmentation

__all__ = ["VolumeDataModule", "VolumeNormalization", "collate_volumes"]

CacheMode = Literal["none", "memory", "disk"]
CT_STATISTICS_KEYS = ("ct_clip", "ct_mean", "ct_std")


# ---- the DataModule --------------------------------------------------------------------------------
class VolumeDataModule(DataChecks, SplitDataModule):
    """3D images and integer label volumes; patches or slices for training, whole volumes for val/test/predict.

    Every case is first preprocessed (deterministic: :meth:`preprocessing`, as :meth:`plan` decides): read,
    reoriented to ``orientation`` (RAS), cropped to its non-zero region (``crop_nonzero``), resampled to ``spacing``
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
        augmentation: random transforms of the training windows (see docs/augmentation.md): a list of MONAI
            dictionary transforms by name with their arguments, ``default`` (nnU-Net's set,
            :data:`~segpipe.transforms.augment3d.DEFAULT_3D_AUGMENTATION`) or null (none). They run on a
            window cropped larger than ``patch_size`` and centre-cropped to it, seeded per sample; with
            ``training_mode: slices`` their 2D counterparts run on the slices.

    Raises:
        ValueError: for a patch size that is not 3 positive values (2 with ``training_mode: slices``),
            ``samples_per_volume < 1``, ``foreground_fraction`` outside [0, 1], ``num_folds < 2``,
            ``fold`` outside 0..num_folds-1, ``slice_axis`` outside 0..2, or ``ct`` normalisation
            without one valid window or percentile pair or with ``ct_std <= 0``, bad axis codes, spacings
            or interpolation order, or a negative margin.
        SegpipeError: from :meth:`check_for` and :meth:`setup`, for an augmentation entry that cannot be
            built (one line naming it and the valid names or arguments).
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
        augmentation: Sequence[dict[str, Any]] | Literal["default"] | None = None,
    ) -> None:
        super().__init__()
        # Into checkpoints (plain values only: they are read with weights_only=True); not logged, so the
        # run parameters stay the task's and Lightning never merges keys the two share (slice_axis).
        self.save_hyperparameters(logger=False)
        # Every setting is checked now rather than in a worker.
        self.sampling = PatchSampling(
            tuple(patch_size),
            samples_per_volume,
            foreground_fraction,
            training_mode,
            slice_axis,
            tuple(resolve_augmentation(augmentation)),
        )
        if cache not in (True, False, "none", "memory", "disk"):
            raise ValueError(f"cache must be 'none', 'memory' or 'disk', got {cache!r}")
        check_folds(fold, num_folds)
        check_ct_settings(normalization, ct_window, ct_percentiles, ct_mean, ct_std)
        if spacing is not None and spacing != "median" and (len(spacing) != 3 or min(spacing) <= 0):
            raise ValueError(f"spacing must be 'median', 3 positive sizes in mm or null, got {spacing}")
        VolumeGeometryd(orientation, None, interpolation_order, crop_nonzero, crop_margin)
        self.root = Path(root)
        self.layout = layout
        self.list_file = list_file
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.fold = fold
        self.num_folds = num_folds
        self.split_file = split_file
        self.patch_size = self.sampling.patch_size
        self.samples_per_volume = samples_per_volume
        self.foreground_fraction = foreground_fraction
        self.batch_size = batch_size
        self.eval_batch_size = 1  # whole volumes, of different sizes
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
        self._statistics: dict[str, Any] | None = None
        self._plan: PreprocessingPlan | None = None
        self._volume_cache: VolumeCache | None = None

    # ---- discovery and splits ----------------------------------------------------------------------
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
        split_file = dataset_folder(self.root) / self.split_file if self.split_file is not None else None
        return named_splits(
            cases,
            attrgetter("name"),
            self.root,
            split_file,
            self.val_fraction,
            self.test_fraction,
            self.split_seed,
            self.fold,
            self.num_folds,
        )

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
        """Values computed once from the training split that preprocessing uses (cached; resolved into
        :meth:`plan`; worth logging with the run).

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

    # ---- the preprocessing plan ---------------------------------------------------------------------
    def plan(self) -> PreprocessingPlan:
        """Every preprocessing decision, resolved from the arguments and :meth:`dataset_statistics` (once).

        Raises:
            DataError: when the statistics need training cases that cannot be found or read.
        """
        if self._plan is None:
            statistics = self.dataset_statistics()
            margin = self.crop_margin
            self._plan = PreprocessingPlan(
                orientation=self.orientation,
                spacing=self.target_spacing(),
                interpolation_order=self.interpolation_order,
                crop_nonzero=self.crop_nonzero,
                crop_margin=margin if isinstance(margin, int) else [int(m) for m in margin],
                normalization=self.normalization,
                ct_window=_floats(self.ct_window),
                ct_percentiles=_floats(self.ct_percentiles),
                ct_statistics=self.ct_statistics,
                ct_mean=self.ct_mean,
                ct_std=self.ct_std,
                intensity_statistics={k: statistics[k] for k in CT_STATISTICS_KEYS if k in statistics},
                patch_size=list(self.patch_size),
                training_mode=self.training_mode,
                slice_axis=self.slice_axis,
            )
        return self._plan

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the DataModule: the resolved plan (``preprocessing_plan``), once
        computed, so that an exported network preprocesses new volumes as in training (segpipe export)."""
        return {PLAN_KEY: self._plan.to_dict()} if self._plan is not None else {}

    def preprocessing(self) -> list[Transform]:
        """The deterministic steps from file to training-ready volume (see
        :func:`segpipe.preprocessing.steps.volume_preprocessing`); random steps are in :attr:`sampling`."""
        return volume_preprocessing(self.plan())

    def preprocessing_signature(self) -> dict[str, Any]:
        """What a cache of :meth:`preprocessing` is keyed on: the plan's output settings (JSON-serialisable)."""
        return self.plan().output_settings()

    def after_preprocessing(self, train: bool) -> Compose:
        """What runs on a preprocessed (possibly cached) item (see :class:`PatchSampling`)."""
        return self.sampling.after_preprocessing(train)

    def transforms(self, train: bool) -> Compose:
        """The MONAI pipeline: :meth:`preprocessing`, then :meth:`after_preprocessing`."""
        return Compose([*self.preprocessing(), *self.after_preprocessing(train).transforms])

    def volume_cache(self) -> VolumeCache:
        """The disk cache of this dataset's preprocessed volumes (see :mod:`segpipe.preprocessing.cache`)."""
        if self._volume_cache is None:
            self._volume_cache = VolumeCache(self.cache_dir, self.preprocessing_signature())
        return self._volume_cache

    # ---- datasets (loaders: SplitDataModule) --------------------------------------------------------
    def split_items(self) -> dict[str, list[VolumeCase]]:
        return self.cases()

    def predict_items(self) -> list[VolumeCase]:
        return self.predict_cases()

    def stage_splits(self, stage: str) -> Sequence[str]:
        # Only what the stage reads: a memory cache preprocesses every volume of a split when it is built.
        return STAGE_SPLITS.get(stage, SPLITS)

    def make_dataset(self, cases: list[VolumeCase], split: str) -> Dataset:
        train = split == "train"
        if self.cache == "memory":
            data = [{"case": case} for case in cases]
            workers = max(1, self.num_workers)
            if train:  # training items keep no geometry: the patches may be drawn without metadata
                return UntrackedCacheDataset(data, self.transforms(train), num_workers=workers)
            return CacheDataset(data, self.transforms(train), num_workers=workers, progress=False)
        cache = self.volume_cache() if self.cache == "disk" and split != "predict" else None
        preprocess = Compose(self.preprocessing())
        return PreprocessedVolumeDataset(
            cases, preprocess, self.after_preprocessing(train), cache, track_meta=not train
        )

    def collate_fn(self, split: str) -> Callable[[list[Any]], Any]:
        # Training items are lists of patches (MONAI's multi-sample convention): list_data_collate flattens them.
        return list_data_collate if split == "train" else collate_volumes

    # ---- model checks --------------------------------------------------------------------------------
    def check_for(self, model: ModelRequirements, stage: str) -> None:
        """Refuse a network that does not fit the training mode or a bad augmentation entry, then build and
        validate the data."""
        self.check_model(model.spatial_dims, model.slice_axis)
        # Checked here rather than in __init__: the CLI reports a SegpipeError raised in a constructor
        # wrapped in jsonargparse's several-line message.
        self.sampling.augmentation_steps()
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


def _floats(values: Sequence[float] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]
