"""DataModule for 3D volumes (NIfTI, NRRD/MHA/MHD, NumPy) and label volumes, trained on random patches.

Two folder layouts are read (``layout: auto`` picks by what exists)::

    root/imagesTr/<case>_0000.nii.gz  root/labelsTr/<case>.nii.gz   -> "nnunet": one file per channel
         imagesTr/<case>_0001.nii.gz   (imagesTs/<case>_0000.nii.gz: inputs for predict)
    root/images/<case>.nii.gz         root/labels/<case>.nii.gz     -> "images_labels" (or masks/)

Files are paired by case name (the file name without ``.nii.gz``, ``.nrrd``, ...), and every file is
read through :mod:`segpipe.data.io3d`, so a bad file is reported as a :class:`DataError` naming it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
import yaml
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
from sklearn.model_selection import KFold

from segpipe.data.io3d import VOLUME_SUFFIXES, VolumeMeta, read_label, read_volume, volume_name
from segpipe.errors import DataError

Layout = Literal["auto", "images_labels", "nnunet"]
VolumeNormalization = Literal["zscore", "ct", "none"]
SPLITS = ("train", "val", "test")
# Image and label geometry must agree to this many millimetres (affine entries, spacing included).
AFFINE_ATOL = 1e-3
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class VolumeCase:
    """One case: its image files, one per channel in channel order, and its label file (None to predict)."""

    name: str
    images: tuple[Path, ...]
    label: Path | None = None


# ---- discovery -------------------------------------------------------------------------------------
def list_volumes(folder: Path) -> dict[str, Path]:
    """Map case name -> path for the volume files in ``folder`` (hidden files skipped).

    Raises:
        DataError: if the folder is missing, or two files share a name (``a.nii`` and ``a.nii.gz``).
    """
    if not folder.is_dir():
        raise DataError(folder, "folder does not exist" if not folder.exists() else "is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.name.lower().endswith(VOLUME_SUFFIXES):
            continue
        name = volume_name(path)
        if name in found:
            raise DataError(path, f"two files share the case name {name!r} ({found[name].name})")
        found[name] = path
    return found


def group_channels(files: dict[str, Path]) -> tuple[dict[str, tuple[Path, ...]], list[DataError]]:
    """Group nnU-Net image files ``<case>_0000``, ``<case>_0001``, ... into multi-channel cases.

    Returns the cases (channel files in channel order) and one problem per file without a channel
    suffix or case with a gap in its channel numbers.
    """
    channels: dict[str, dict[int, Path]] = {}
    problems: list[DataError] = []
    for name, path in files.items():
        match = _CHANNEL_SUFFIX.match(name)
        if match is None:
            problems.append(DataError(path, "nnU-Net image names end in a 4-digit channel, e.g. case_0000"))
            continue
        channels.setdefault(match["case"], {})[int(match["channel"])] = path
    cases: dict[str, tuple[Path, ...]] = {}
    for case, by_index in sorted(channels.items()):
        if sorted(by_index) != list(range(len(by_index))):
            first = by_index[min(by_index)]
            problems.append(
                DataError(first, f"case {case!r} has channels {sorted(by_index)}, expected 0..{len(by_index) - 1}")
            )
            continue
        cases[case] = tuple(by_index[i] for i in range(len(by_index)))
    return cases, problems


def pair_cases(
    images: dict[str, tuple[Path, ...]], labels: dict[str, Path], images_dir: Path, labels_dir: Path
) -> tuple[list[VolumeCase], list[DataError]]:
    """Pair image cases with label files by name; returns the pairs and one problem per unpaired file."""
    problems = [DataError(images[n][0], f"has no label in {labels_dir}") for n in sorted(set(images) - set(labels))]
    problems += [DataError(labels[n], f"has no image in {images_dir}") for n in sorted(set(labels) - set(images))]
    cases = [VolumeCase(n, images[n], labels[n]) for n in sorted(set(images) & set(labels))]
    return cases, problems


def split_names(
    names: Iterable[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    fold: int | None = None,
    num_folds: int = 5,
) -> dict[str, list[str]]:
    """Seeded case-level split into train/val/test; each name lands in exactly one split.

    The test cases are drawn first, so they are the same for every fold. Without ``fold``, a
    ``val_fraction`` share of the cases is the val split; with it, the remaining cases are cut into
    ``num_folds`` folds (scikit-learn ``KFold``, shuffled with ``seed``) and fold ``fold`` is the val split.

    Raises:
        ValueError: for fractions outside [0, 1) or summing to 1 or more, or fewer cases than folds.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) "
            "and sum to less than 1"
        )
    names = sorted(names)
    order = np.random.default_rng(seed).permutation(len(names))
    n_test = round(len(names) * test_fraction)
    test = [names[i] for i in order[:n_test]]
    rest = [names[i] for i in order[n_test:]]
    if fold is None:
        n_val = round(len(names) * val_fraction)
        val, train = rest[:n_val], rest[n_val:]
    else:
        rest.sort()
        if len(rest) < num_folds:
            raise ValueError(f"{len(rest)} cases (after the test split) cannot be cut into {num_folds} folds")
        train_idx, val_idx = list(KFold(num_folds, shuffle=True, random_state=seed).split(rest))[fold]
        train, val = [rest[i] for i in train_idx], [rest[i] for i in val_idx]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def read_split_file(path: Path, names: Sequence[str]) -> dict[str, list[str]]:
    """Read a YAML mapping ``{train: [case, ...], val: [...], test: [...]}``; unlisted cases are left out.

    Raises:
        DataError: naming ``path`` when it is missing or malformed, lists an unknown case, or puts one
            case in two splits.
    """
    if not path.is_file():
        raise DataError(path, "split file does not exist")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DataError(path, f"is not valid YAML ({err})".replace("\n", " ")) from None
    if not isinstance(content, dict) or not set(content) <= set(SPLITS):
        raise DataError(path, f"must map some of {list(SPLITS)} to lists of case names")
    splits = {s: [str(n) for n in content.get(s) or []] for s in SPLITS}
    unknown = sorted({n for listed in splits.values() for n in listed} - set(names))
    if unknown:
        raise DataError(path, f"lists cases that are not in the dataset: {', '.join(unknown[:5])}")
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            shared = sorted(set(splits[a]) & set(splits[b]))
            if shared:
                raise DataError(path, f"cases {', '.join(shared[:5])} are in both {a} and {b}")
    return splits


# ---- reading one case ------------------------------------------------------------------------------
def same_geometry(a: VolumeMeta, b: VolumeMeta) -> bool:
    """Whether two affines agree within :data:`AFFINE_ATOL` mm."""
    return bool(np.allclose(a.affine, b.affine, rtol=0, atol=AFFINE_ATOL))


def _geometry_problem(what: str, meta: VolumeMeta, reference: VolumeMeta, ref_name: str) -> str:
    spacing = tuple(round(s, 4) for s in meta.spacing)
    ref_spacing = tuple(round(s, 4) for s in reference.spacing)
    origin = tuple(np.round(meta.affine[:3, 3], 3).tolist())
    ref_origin = tuple(np.round(reference.affine[:3, 3], 3).tolist())
    return (
        f"{what} affine differs from {ref_name} (spacing {spacing} vs {ref_spacing}, "
        f"origin {origin} vs {ref_origin}; tolerance {AFFINE_ATOL} mm)"
    )


def load_case(case: VolumeCase) -> tuple[np.ndarray, np.ndarray | None, VolumeMeta]:
    """Read a case: image (C, X, Y, Z) float32, label (X, Y, Z) int64 or None, and the image geometry.

    Raises:
        DataError: naming the file, when a file cannot be read (see :mod:`segpipe.data.io3d`), when
            channel files differ in shape or affine, or when the label's shape or affine differs from
            the image's.
        ValueError: for a case without image files.
    """
    arrays: list[np.ndarray] = []
    meta: VolumeMeta | None = None
    for path in case.images:
        array, channel_meta = read_volume(path)
        if meta is None:
            meta = channel_meta
        elif array.shape[1:] != arrays[0].shape[1:]:
            raise DataError(path, f"shape {array.shape[1:]} differs from channel 0 {arrays[0].shape[1:]}")
        elif not same_geometry(channel_meta, meta):
            raise DataError(path, _geometry_problem("channel", channel_meta, meta, case.images[0].name))
        arrays.append(array)
    if meta is None:
        raise ValueError(f"case {case.name!r} lists no image files")
    image = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    if case.label is None:
        return image, None, meta
    label, label_meta = read_label(case.label)
    if label.shape != image.shape[1:]:
        raise DataError(
            case.label, f"label shape {label.shape} differs from image shape {image.shape[1:]} ({case.images[0].name})"
        )
    if not same_geometry(label_meta, meta):
        raise DataError(case.label, _geometry_problem("label", label_meta, meta, f"image {case.images[0].name}"))
    return image, label, meta


class LoadCased(Transform):
    """MONAI transform ``{"case": VolumeCase}`` -> ``{"image": (C, X, Y, Z) float32, "mask": (1, X, Y, Z)
    int64, "name": str}`` (no ``"mask"`` for a case without label), reading through :func:`load_case`.
    """

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        case: VolumeCase = data["case"]
        image, label, _ = load_case(case)
        out: dict[str, Any] = {"image": image, "name": case.name}
        if label is not None:
            out["mask"] = label[None]
        return out


# ---- the DataModule --------------------------------------------------------------------------------
class VolumeDataModule(pl.LightningDataModule):
    """3D images and integer label volumes; patches for training, whole volumes for val/test/predict.

    Training items are lists of ``samples_per_volume`` patches cropped from one volume (MONAI's
    multi-sample convention), each ``{"image": (C, *patch_size) float32, "mask": (*patch_size) int64,
    "name": str}``; a training batch therefore holds ``batch_size * samples_per_volume`` patches. A
    ``foreground_fraction`` share of patches is centred on a foreground voxel (label > 0), the rest on
    background (MONAI ``RandCropByPosNegLabeld``); volumes smaller than the patch are zero-padded first.
    Val/test/predict items are whole volumes ``{"image": (C, X, Y, Z), "mask": (X, Y, Z), "name"}``,
    batch size 1, for the task's sliding-window inference (``model.inference_roi``).

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
    def resolved_layout(self) -> Literal["images_labels", "nnunet"]:
        """The layout in use; ``auto`` picks ``nnunet`` when ``imagesTr/`` exists.

        Raises:
            DataError: when ``root`` is missing or holds neither layout.
        """
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder does not exist")
        if self.layout != "auto":
            return self.layout
        if (self.root / "imagesTr").is_dir():
            return "nnunet"
        if (self.root / "images").is_dir():
            return "images_labels"
        raise DataError(self.root, "holds neither imagesTr/ + labelsTr/ (nnU-Net) nor images/ + labels/")

    def _discover(self) -> tuple[list[VolumeCase], list[DataError]]:
        if self.resolved_layout() == "nnunet":
            images_dir, labels_dir = self.root / "imagesTr", self.root / "labelsTr"
            images, problems = group_channels(list_volumes(images_dir))
        else:
            images_dir = self.root / "images"
            labels_dir = self.root / "labels"
            if not labels_dir.is_dir() and (self.root / "masks").is_dir():
                labels_dir = self.root / "masks"
            images = {name: (path,) for name, path in list_volumes(images_dir).items()}
            problems = []
        if not images and not problems:
            raise DataError(images_dir, f"holds no volumes ({', '.join(VOLUME_SUFFIXES)})")
        cases, unpaired = pair_cases(images, list_volumes(labels_dir), images_dir, labels_dir)
        return cases, problems + unpaired

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
        """Cases to predict: ``predict_dir``, or ``imagesTs/`` of an nnU-Net dataset.

        Raises:
            DataError: when there is no folder to predict or it holds no volumes.
        """
        nnunet = self.layout == "nnunet" or (self.layout == "auto" and (self.root / "imagesTr").is_dir())
        if self.predict_dir is not None:
            folder = Path(self.predict_dir)
        elif nnunet and (self.root / "imagesTs").is_dir():
            folder = self.root / "imagesTs"
        else:
            raise DataError(self.root, "no volumes to predict: set --data.predict_dir <folder>")
        files = list_volumes(folder)
        if not files:
            raise DataError(folder, f"holds no volumes ({', '.join(VOLUME_SUFFIXES)})")
        if not nnunet:
            return [VolumeCase(name, (path,)) for name, path in files.items()]
        grouped, problems = group_channels(files)
        if problems:
            raise problems[0]
        return [VolumeCase(name, paths) for name, paths in grouped.items()]

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

    def transforms(self, train: bool) -> Compose:
        """The MONAI pipeline: read, normalise, and for training pad and crop patches."""
        to_tensors: list[Transform] = [
            SqueezeDimd("mask", dim=0, allow_missing_keys=True),
            EnsureTyped("image", dtype=torch.float32, track_meta=False),
            EnsureTyped("mask", dtype=torch.int64, track_meta=False, allow_missing_keys=True),
        ]
        steps: list[Transform] = [LoadCased(), *self._normalize()]
        if train:
            steps += [
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
