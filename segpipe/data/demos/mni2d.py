"""The bundled demo: brain tissue segmentation on axial slices of the MNI152 2009a T1 template.

The template and its grey/white-matter probability maps ship inside the nilearn wheel, so the demo
needs no download. Classes: 0 background/CSF, 1 grey matter (gm > 0.5 and gm >= wm), 2 white matter
(wm > 0.5 and wm > gm). Axial slices with brain are cut into contiguous slabs that are assigned to
train/val/test; two guard slices are dropped at each boundary between different splits, so that no
split sees a neighbour of another split's slice.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.resources import files
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml
from PIL import Image

from segpipe.data.modules.folder import FolderDataModule
from segpipe.data.sources.dataset_json import DATASET_JSON
from segpipe.io.atomic import publish_folder, write_text
from segpipe.preprocessing.normalize import Normalization

CLASS_NAMES = ("background", "grey_matter", "white_matter")
# Ten slabs from inferior to superior; val and test each get two slabs far apart.
SLAB_PATTERN = ("train", "train", "val", "train", "test", "train", "train", "val", "train", "test")
GUARD_SLICES = 2
MIN_BRAIN_PIXELS = 500


def write_declaration(folder: Path, num_training: int, file_ending: str) -> Path:
    """Write the demo's ``dataset.json`` (nnU-Net v2 keys): the channel and the class names, which
    ``segpipe plan`` reads, so a plan of the demo names its classes."""
    declaration = {
        "channel_names": {"0": "T1"},
        "labels": {name: value for value, name in enumerate(CLASS_NAMES)},
        "numTraining": num_training,
        "file_ending": file_ending,
    }
    return write_text(folder / DATASET_JSON, json.dumps(declaration, indent=2) + "\n")


def _load_template(kind: str) -> np.ndarray:
    path = files("nilearn.datasets") / "data" / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
    return np.asanyarray(nib.load(str(path)).dataobj)


def mni_labels(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """Tissue classes from probability maps (floats in [0, 1])."""
    labels = np.zeros(gm.shape, np.uint8)
    labels[(gm > 0.5) & (gm >= wm)] = 1
    labels[(wm > 0.5) & (wm > gm)] = 2
    return labels


def slab_splits(slices: list[int], n_slabs: int = len(SLAB_PATTERN)) -> dict[str, list[int]]:
    """Assign contiguous slabs of ``slices`` to splits by ``SLAB_PATTERN``, dropping guard slices."""
    slabs = np.array_split(np.asarray(slices), n_slabs)
    splits: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, slab in enumerate(slabs):
        split = SLAB_PATTERN[i]
        keep = list(slab)
        if i > 0 and SLAB_PATTERN[i - 1] != split:
            keep = keep[GUARD_SLICES:]
        if i + 1 < n_slabs and SLAB_PATTERN[i + 1] != split:
            keep = keep[: len(keep) - GUARD_SLICES]
        splits[split] += [int(z) for z in keep]
    return splits


def mni_slices() -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The T1 template, its tissue labels (0 background, 1 grey, 2 white matter) and the axial slices
    (z indices) that hold at least ``MIN_BRAIN_PIXELS`` brain pixels."""
    t1 = _load_template("t1")
    gm = _load_template("gm").astype(np.float32) / 255.0
    wm = _load_template("wm").astype(np.float32) / 255.0
    labels = mni_labels(gm, wm)
    brain = [z for z in range(labels.shape[2]) if (labels[:, :, z] > 0).sum() >= MIN_BRAIN_PIXELS]
    return t1, labels, brain


def build_mni_demo(root: str | Path) -> dict[str, list[int]]:
    """Write the demo dataset to ``root`` (layout ``splits``, 8-bit PNG images and masks).

    The folder is written under a temporary name and renamed when complete, so an interrupted build
    never leaves a half-written dataset behind.
    """
    root = Path(root)
    t1, labels, brain = mni_slices()
    splits = slab_splits(brain)
    tmp = root.with_name(f".{root.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for split, zs in splits.items():
        for sub in ("images", "masks"):
            (tmp / split / sub).mkdir(parents=True)
        for z in zs:
            # Rotate so that anterior is up, as radiology viewers show axial slices.
            image = np.rot90(t1[:, :, z])
            mask = np.rot90(labels[:, :, z])
            Image.fromarray(np.ascontiguousarray(image)).save(tmp / split / "images" / f"mni152_z{z:03d}.png")
            Image.fromarray(np.ascontiguousarray(mask)).save(tmp / split / "masks" / f"mni152_z{z:03d}.png")
    info = {
        "source": "MNI152 2009a symmetric T1 template (nilearn)",
        "classes": list(CLASS_NAMES),
        "slices": splits,
    }
    (tmp / "demo.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
    write_declaration(tmp, len(splits["train"]), ".png")
    publish_folder(tmp, root)  # another process (a second DDP rank) may have published its identical copy
    return splits


class MNIDemoDataModule(FolderDataModule):
    """:class:`FolderDataModule` over the MNI152 demo; builds the folder on first use.

    Slices of one volume share one intensity scale, so they are normalised with the training slices'
    mean and std (``normalization: dataset``: 49.06 and 81.99 on the demo); per-slice z-scores would map
    the same tissue to different values on every slice.
    """

    def __init__(self, root: str = "data/demo", normalization: Normalization = "dataset", **kwargs: object) -> None:
        super().__init__(root=root, layout="splits", normalization=normalization, **kwargs)  # type: ignore[arg-type]

    def prepare_data(self) -> None:
        ensure_demo(self.root)


def ensure_demo(root: Path) -> None:
    """Build the demo at ``root`` unless it is there; add the ``dataset.json`` a demo built before it lacks."""
    if not (root / "demo.yaml").is_file():
        build_mni_demo(root)
    elif not (root / DATASET_JSON).is_file():
        write_declaration(root, len(list((root / "train" / "images").glob("*.png"))), ".png")
