"""The benchmark's datasets, cut from the MNI152 2009a template that ships in the nilearn wheel (no download).

Every set is written in nnU-Net's raw layout, which segpipe reads too (``layout: nnunet``), so both tools
train on the same files::

    <raw>/Dataset<ID>_<name>/imagesTr/<case>_0000.nii.gz   labelsTr/<case>.nii.gz   dataset.json
                             imagesTs/<case>_0000.nii.gz   labelsTs/<case>.nii.gz   (held out: predicted, scored)

Cases are slices or slabs of the one template, assigned to splits by the demos' slab pattern
(:data:`segpipe.data.demos.mni2d.SLAB_PATTERN`) with guard slices between splits, so no held-out voxel or
its neighbour is trained on. The demos' train and val slabs together are the training cases (each tool
holds out its own validation cases from them); their test slabs are the held-out cases.

2D cases are NIfTI files with one slice, (X, Y, 1): nnU-Net's SimpleITK reader and segpipe's volume
reader both take them with their spacing, and intensities stay the template's (PNG would work for
nnU-Net's ``NaturalImage2DIO`` but segpipe reads PNG only as image/mask folders, not in nnU-Net layout).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segpipe.data.demos.mni2d import CLASS_NAMES, MIN_BRAIN_PIXELS, _load_template, mni_labels, slab_splits
from segpipe.data.demos.mni3d import slab_ranges, template_affine
from segpipe.io.atomic import publish_folder
from segpipe.io.volumes import write_label, write_volume

BRAIN_CLASS_NAMES = ("background", "brain")
TRAINING_SPLITS = ("train", "val")
HELD_OUT_SPLIT = "test"
Labeler = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class SetSpec:
    """One benchmark set: its name, nnU-Net dataset id, dimensionality (``2d``: one-slice cases for nnU-Net's
    ``2d`` configuration; ``3d``: ``3d_fullres``), class names (background first) and a one-line description."""

    name: str
    dataset_id: int
    dims: str
    class_names: tuple[str, ...]
    description: str

    @property
    def folder_name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.name}"

    @property
    def nnunet_configuration(self) -> str:
        return "2d" if self.dims == "2d" else "3d_fullres"


@dataclass(frozen=True)
class Case:
    """One case: ``image`` (X, Y, Z) float32, ``label`` (X, Y, Z) uint8, its (4, 4) affine and its split."""

    name: str
    split: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


def brain_labels(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """Brain tissue (1: grey plus white matter probability above 0.5) against CSF and background (0)."""
    return ((gm + wm) > 0.5).astype(np.uint8)


def block_mean(volume: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """(X, Y, Z) -> (X / fx, Y / fy, Z / fz) float32 by averaging blocks of ``factors`` voxels.

    (The 3D demo's ``downsample_in_plane`` averages in x and y only; the anisotropic set needs z too.)

    Raises:
        ValueError: when a side is not a multiple of its factor.
    """
    if any(size % f for size, f in zip(volume.shape, factors, strict=True)):
        raise ValueError(f"shape {volume.shape} is not a multiple of {factors}")
    (x, y, z), (fx, fy, fz) = volume.shape, factors
    blocks = volume.astype(np.float32).reshape(x // fx, fx, y // fy, fy, z // fz, fz)
    return blocks.mean(axis=(1, 3, 5))


def block_affine(affine: np.ndarray, offset: tuple[int, int, int], factors: tuple[int, int, int]) -> np.ndarray:
    """Affine of a volume cropped at voxel ``offset`` and then block-averaged by ``factors``: voxel (i, j, k)
    of the result is centred on the mean position of its source voxels."""
    factors_array = np.asarray(factors, np.float64)
    to_source = np.eye(4)
    to_source[:3, :3] = np.diag(factors_array)
    to_source[:3, 3] = np.asarray(offset, np.float64) + (factors_array - 1) / 2
    return np.asarray(affine, np.float64) @ to_source


def bounding_box(mask: np.ndarray, factors: tuple[int, int, int]) -> list[slice]:
    """Per axis, the extent of ``mask`` widened so that its length is a multiple of the axis' factor
    (shifted back inside the volume where the widening would leave it)."""
    box = []
    for axis, factor in enumerate(factors):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        start, stop = int(present[0]), int(present[-1]) + 1
        stop += (-(stop - start)) % factor
        if stop > mask.shape[axis]:
            start, stop = start - (stop - mask.shape[axis]), mask.shape[axis]
        box.append(slice(start, stop))
    return box


def template_slabs(
    labeler: Labeler, slab_axis: int, factors: tuple[int, int, int], prefix: str, crop: bool = True
) -> list[Case]:
    """Slabs of the template along ``slab_axis`` (the demos' ten slabs, guard slices removed), each cropped to
    the labelled box (``crop``) and block-averaged by ``factors``; labels are ``labeler`` of the averaged
    grey/white-matter probability maps, as in the 3D demo. A slab's length along ``slab_axis`` is cut to a
    multiple of its factor.
    """
    t1 = _load_template("t1")
    gm = _load_template("gm").astype(np.float32) / 255.0
    wm = _load_template("wm").astype(np.float32) / 255.0
    full_labels = labeler(gm, wm)
    other = tuple(a for a in range(3) if a != slab_axis)
    counts = (full_labels > 0).sum(axis=other)
    slices = [int(i) for i in np.flatnonzero(counts >= MIN_BRAIN_PIXELS)]
    box = bounding_box(full_labels > 0, factors) if crop else [slice(0, n) for n in full_labels.shape]
    affine = template_affine()
    cases = []
    for index, (split, first, last) in enumerate(slab_ranges(slices)):
        length = (last + 1 - first) // factors[slab_axis] * factors[slab_axis]
        region = list(box)
        region[slab_axis] = slice(first, first + length)
        window = tuple(region)
        label = labeler(block_mean(gm[window], factors), block_mean(wm[window], factors))
        offset = (region[0].start, region[1].start, region[2].start)
        image = block_mean(t1[window], factors)
        cases.append(Case(f"{prefix}{index:02d}", split, image, label, block_affine(affine, offset, factors)))
    return cases


def template_slices() -> list[Case]:
    """The 2D demo's axial slices (whole 197 x 233 slices at 1 mm, the demo's splits), each as (X, Y, 1)."""
    t1 = _load_template("t1").astype(np.float32)
    gm = _load_template("gm").astype(np.float32) / 255.0
    wm = _load_template("wm").astype(np.float32) / 255.0
    labels = mni_labels(gm, wm)
    brain = [z for z in range(labels.shape[2]) if (labels[:, :, z] > 0).sum() >= MIN_BRAIN_PIXELS]
    affine = template_affine()
    cases = []
    for split, zs in slab_splits(brain).items():
        for z in zs:
            window = (slice(None), slice(None), slice(z, z + 1))
            slice_affine = block_affine(affine, (0, 0, z), (1, 1, 1))
            cases.append(Case(f"z{z:03d}", split, t1[window], labels[window], slice_affine))
    return cases


SETS: dict[str, SetSpec] = {
    spec.name: spec
    for spec in (
        SetSpec("mni2d", 501, "2d", CLASS_NAMES, "grey/white matter on axial slices (1 mm), the 2D demo's"),
        SetSpec("mni3d", 502, "3d", CLASS_NAMES, "grey/white matter on the 3D demo's axial slabs, at 1 mm"),
        SetSpec("brainmask", 503, "3d", BRAIN_CLASS_NAMES, "brain tissue vs CSF/background on coronal slabs, 2 mm"),
        SetSpec("mni3d_aniso", 504, "3d", CLASS_NAMES, "grey/white matter on axial slabs at 1 x 1 x 3 mm"),
    )
}

BUILDERS: dict[str, Callable[[], list[Case]]] = {
    "mni2d": template_slices,
    # At the 3D demo's 2 x 2 x 1 mm, nnU-Net 2.8.1 plans a network without pooling (only the thin z axis is
    # within 2x of the finest spacing) whose deep-supervision loss fails; at 1 mm it plans a full U-Net.
    "mni3d": lambda: template_slabs(mni_labels, 2, (1, 1, 1), "slab"),
    "brainmask": lambda: template_slabs(brain_labels, 1, (2, 2, 2), "coronal"),
    "mni3d_aniso": lambda: template_slabs(mni_labels, 2, (1, 1, 3), "slab"),
}


def dataset_json(spec: SetSpec, num_training: int) -> dict[str, object]:
    """nnU-Net v2's ``dataset.json`` for ``spec`` (segpipe reads the same keys)."""
    return {
        "name": spec.name,
        "description": spec.description,
        "reference": "MNI152 2009a symmetric T1 template and tissue maps, from the nilearn package",
        "channel_names": {"0": "T1"},
        "labels": {name: value for value, name in enumerate(spec.class_names)},
        "numTraining": num_training,
        "file_ending": ".nii.gz",
    }


def write_raw_dataset(folder: Path, spec: SetSpec, cases: list[Case]) -> None:
    """Write ``cases`` into ``folder`` in nnU-Net raw layout (training splits to ``imagesTr``/``labelsTr``,
    the held-out split to ``imagesTs``/``labelsTs``), under a temporary name renamed when complete."""
    tmp = folder.with_name(f".{folder.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for case in cases:
        images, labels = ("imagesTr", "labelsTr") if case.split in TRAINING_SPLITS else ("imagesTs", "labelsTs")
        write_volume(tmp / images / f"{case.name}_0000.nii.gz", case.image, case.affine)
        write_label(tmp / labels / f"{case.name}.nii.gz", case.label, case.affine)
    num_training = sum(case.split in TRAINING_SPLITS for case in cases)
    (tmp / "dataset.json").write_text(json.dumps(dataset_json(spec, num_training), indent=2) + "\n")
    publish_folder(tmp, folder)


def ensure_dataset(raw: Path, name: str) -> Path:
    """The folder of set ``name`` under ``raw`` (nnU-Net's ``nnUNet_raw``), built on first use."""
    spec = SETS[name]
    folder = raw / spec.folder_name
    if not (folder / "dataset.json").is_file():
        write_raw_dataset(folder, spec, BUILDERS[name]())
    return folder
