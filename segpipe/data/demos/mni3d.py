"""The 3D demo: brain tissue segmentation on axial slabs of the MNI152 2009a T1 template.

Same source and classes as the 2D demo (:mod:`segpipe.data.demos.mni2d`): 0 background/CSF, 1 grey matter,
2 white matter. The brain's bounding box is downsampled 2x in-plane (2 x 2 x 1 mm voxels; the T1 and the
tissue probability maps are averaged over 2 x 2 blocks, then labelled) and cut along z into ten
contiguous slabs, assigned to train/val/test by :data:`segpipe.data.demos.mni2d.SLAB_PATTERN`. As in the 2D
demo, two guard slices are dropped at each boundary between different splits, so no voxel, and no
slice next to one, is in two splits. Each slab's affine is the template's composed with the crop and
the downsampling, so every voxel sits where its source voxels are in MNI space.

Layout written (``images_labels`` with a split file)::

    root/images/mni152_slabNN.nii.gz   root/labels/mni152_slabNN.nii.gz
    root/split.yaml                    {train: [...], val: [...], test: [...]}
    root/demo.yaml                     source, classes, voxel size and each slab's z range
"""

from __future__ import annotations

import os
import shutil
from importlib.resources import files
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

from segpipe.data.demos.mni2d import (
    CLASS_NAMES,
    MIN_BRAIN_PIXELS,
    SLAB_PATTERN,
    _load_template,
    mni_labels,
    slab_splits,
    write_declaration,
)
from segpipe.data.modules.volumes import VolumeDataModule
from segpipe.data.sources.dataset_json import DATASET_JSON
from segpipe.io.atomic import publish_folder
from segpipe.io.volumes import write_label, write_volume

IN_PLANE_FACTOR = 2
SPLIT_FILE = "split.yaml"
INFO_FILE = "demo.yaml"


def template_affine() -> np.ndarray:
    """The (4, 4) voxel -> MNI mm affine of the template volumes that :func:`_load_template` reads."""
    path = files("nilearn.datasets") / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    return np.asarray(nib.load(str(path)).affine, np.float64)


def brain_box(labels: np.ndarray, factor: int = IN_PLANE_FACTOR) -> tuple[slice, slice]:
    """In-plane (x, y) bounding box of ``labels > 0`` over all slices of an (X, Y, Z) volume, widened
    so that both sides are multiples of ``factor`` (staying inside the volume)."""
    box: list[slice] = []
    for axis in (0, 1):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero((labels > 0).any(axis=other))
        start, stop = int(present[0]), int(present[-1]) + 1
        stop += (-(stop - start)) % factor
        if stop > labels.shape[axis]:
            start -= stop - labels.shape[axis]
            stop = labels.shape[axis]
        box.append(slice(start, stop))
    return box[0], box[1]


def downsample_in_plane(volume: np.ndarray, factor: int = IN_PLANE_FACTOR) -> np.ndarray:
    """(X, Y, Z) -> (X / factor, Y / factor, Z) float32 by averaging factor x factor blocks.

    Raises:
        ValueError: when X or Y is not a multiple of ``factor``.
    """
    x, y, z = volume.shape
    if x % factor or y % factor:
        raise ValueError(f"in-plane size {(x, y)} is not a multiple of {factor}")
    blocks = volume.astype(np.float32).reshape(x // factor, factor, y // factor, factor, z)
    return blocks.mean(axis=(1, 3))


def crop_downsample_affine(affine: np.ndarray, offset: tuple[int, int, int], factor: int) -> np.ndarray:
    """Affine of a volume cropped at voxel ``offset`` and then block-averaged ``factor`` x in x and y.

    Voxel (i, j, k) of the result is the mean of source voxels ``offset + (factor*i .. factor*i +
    factor-1, factor*j .., k)``, whose centre is ``offset + (factor*i + (factor-1)/2, ..., k)``.
    """
    shift = (factor - 1) / 2
    to_source = nib.affines.from_matvec(np.diag([factor, factor, 1.0]), np.add(offset, [shift, shift, 0.0]))
    return np.asarray(affine, np.float64) @ to_source


def slab_ranges(slices: list[int]) -> list[tuple[str, int, int]]:
    """``(split, first z, last z)`` of each contiguous slab, guard slices removed (see :func:`slab_splits`)."""
    kept = {split: set(zs) for split, zs in slab_splits(slices).items()}
    ranges = []
    for split, slab in zip(SLAB_PATTERN, np.array_split(np.asarray(slices), len(SLAB_PATTERN)), strict=True):
        zs = [int(z) for z in slab if int(z) in kept[split]]
        ranges.append((split, zs[0], zs[-1]))
    return ranges


def build_mni_demo3d(root: str | Path) -> dict[str, list[str]]:
    """Write the 3D demo dataset to ``root``; returns the case names of each split.

    The folder is written under a temporary name and renamed when complete, so an interrupted build
    never leaves a half-written dataset behind.
    """
    root = Path(root)
    gm = _load_template("gm").astype(np.float32) / 255.0
    wm = _load_template("wm").astype(np.float32) / 255.0
    labels = mni_labels(gm, wm)
    xs, ys = brain_box(labels)
    brain = [z for z in range(labels.shape[2]) if (labels[:, :, z] > 0).sum() >= MIN_BRAIN_PIXELS]
    t1 = downsample_in_plane(_load_template("t1")[xs, ys])
    labels = mni_labels(downsample_in_plane(gm[xs, ys]), downsample_in_plane(wm[xs, ys]))
    tmp = root.with_name(f".{root.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    slabs: dict[str, list[int]] = {}
    source_affine = template_affine()
    for i, (split, z0, z1) in enumerate(slab_ranges(brain)):
        name = f"mni152_slab{i:02d}"
        affine = crop_downsample_affine(source_affine, (xs.start, ys.start, z0), IN_PLANE_FACTOR)
        write_volume(tmp / "images" / f"{name}.nii.gz", t1[:, :, z0 : z1 + 1], affine)
        write_label(tmp / "labels" / f"{name}.nii.gz", labels[:, :, z0 : z1 + 1], affine)
        splits[split].append(name)
        slabs[name] = [z0, z1]
    (tmp / SPLIT_FILE).write_text(yaml.safe_dump(splits, sort_keys=False))
    info = {
        "source": "MNI152 2009a symmetric T1 template (nilearn)",
        "classes": list(CLASS_NAMES),
        "voxel_size_mm": [float(IN_PLANE_FACTOR), float(IN_PLANE_FACTOR), 1.0],
        "template_box": {"x": [xs.start, xs.stop], "y": [ys.start, ys.stop]},
        "slab_z_ranges": slabs,
    }
    (tmp / INFO_FILE).write_text(yaml.safe_dump(info, sort_keys=False))
    write_declaration(tmp, sum(len(names) for names in splits.values()), ".nii.gz")
    publish_folder(tmp, root)  # another process (a second DDP rank) may have published its identical copy
    return splits


class MNIDemo3DDataModule(VolumeDataModule):
    """:class:`VolumeDataModule` over the 3D MNI152 demo slabs; builds the folder on first use."""

    def __init__(self, root: str = "data/demo3d", **kwargs: object) -> None:
        super().__init__(root=root, layout="images_labels", split_file=SPLIT_FILE, **kwargs)  # type: ignore[arg-type]

    def prepare_data(self) -> None:
        if not (self.root / INFO_FILE).is_file():
            build_mni_demo3d(self.root)
        elif not (self.root / DATASET_JSON).is_file():  # a demo built before segpipe wrote one
            write_declaration(self.root, len(list((self.root / "labels").glob("*.nii.gz"))), ".nii.gz")
        super().prepare_data()  # the disk cache, with cache: disk
