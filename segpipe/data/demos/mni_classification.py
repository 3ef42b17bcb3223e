"""A classification task from the demo's training slices: which slab of the brain is an axial slice from?

Only slices of the segmentation demo's *training* slabs are used (the same slices, after the same
guard slices are dropped), so a backbone pretrained here has never seen the segmentation validation
or test slabs. The label of a slice is the index of its training slab, inferior to superior
(``slab0`` .. ``slab5``): telling them apart takes the anatomy's shape and size, not tissue labels.
Layout ``root/slab<k>/mni152_z<z>.png`` (the flat layout of ``ClassificationFolderDataModule``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from segpipe.data.demos.mni2d import SLAB_PATTERN, mni_slices, slab_splits
from segpipe.data.modules.classification import ClassificationFolderDataModule
from segpipe.data.sources.pairing import Case
from segpipe.io.atomic import publish_folder
from segpipe.preprocessing.normalize import Normalization


def slab_classes(brain_slices: list[int]) -> dict[int, str]:
    """Training slice -> class name ``slab<k>``, k counting the training slabs from inferior to superior."""
    train = set(slab_splits(brain_slices)["train"])
    slabs = [
        s
        for i, s in enumerate(np.array_split(np.asarray(brain_slices), len(SLAB_PATTERN)))
        if SLAB_PATTERN[i] == "train"
    ]
    return {int(z): f"slab{k}" for k, slab in enumerate(slabs) for z in slab if int(z) in train}


def build_slab_classification(root: str | Path) -> dict[int, str]:
    """Write the slab-classification dataset to ``root`` (8-bit PNGs, one folder per slab); returns the labels."""
    root = Path(root)
    t1, _, brain = mni_slices()
    classes = slab_classes(brain)
    tmp = root.with_name(f".{root.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for z, name in classes.items():
        (tmp / name).mkdir(parents=True, exist_ok=True)
        image = np.ascontiguousarray(np.rot90(t1[:, :, z]))
        Image.fromarray(image).save(tmp / name / f"mni152_z{z:03d}.png")
    info = {"source": "MNI152 2009a T1, training slabs of the segmentation demo", "labels": classes}
    (tmp / "classes.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
    publish_folder(tmp, root)  # another process (a second DDP rank) may have published its identical copy
    return classes


class MNISlabClassificationDataModule(ClassificationFolderDataModule):
    """:class:`ClassificationFolderDataModule` over the slab-classification demo; builds it on first use.

    ``normalization: dataset`` (the default) takes the mean and std of every image of the demo: they are
    the segmentation demo's training slices, so the encoder sees the same intensities in both tasks (the
    segmentation demo's statistics, 49.06 and 81.99).
    """

    def __init__(
        self, root: str = "data/demo_slabs", normalization: Normalization = "dataset", **kwargs: object
    ) -> None:
        super().__init__(root=root, layout="flat", normalization=normalization, **kwargs)  # type: ignore[arg-type]

    def statistics_cases(self) -> list[Case]:
        return [case for split in self.splits().values() for case, _ in split]

    def prepare_data(self) -> None:
        if not (self.root / "classes.yaml").is_file():
            build_slab_classification(self.root)
