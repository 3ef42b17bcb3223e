import itertools
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from segpipe.data.demos.mni2d import GUARD_SLICES, build_mni_demo, mni_labels, slab_splits


def test_label_rule_follows_the_tissue_probabilities():
    gm = np.array([0.6, 0.5, 0.2, 0.55, 0.3])
    wm = np.array([0.3, 0.4, 0.7, 0.55, 0.3])
    np.testing.assert_array_equal(mni_labels(gm, wm), [1, 0, 2, 1, 0])


def test_slabs_are_contiguous_disjoint_and_guarded():
    splits = slab_splits(list(range(100, 250)))
    every = sorted(z for zs in splits.values() for z in zs)
    assert len(every) == len(set(every))
    owner = {z: s for s, zs in splits.items() for z in zs}
    for a, b in itertools.pairwise(every):
        if owner[a] != owner[b]:
            assert b - a > GUARD_SLICES, (a, b)  # neighbours across splits are at least the guard apart
    for zs in splits.values():
        runs = np.split(np.array(zs), np.where(np.diff(zs) != 1)[0] + 1)
        assert all(len(r) >= 5 for r in runs)


@pytest.mark.slow
def test_demo_build_writes_readable_pairs_with_three_classes(tmp_path: Path):
    root = tmp_path / "demo"
    splits = build_mni_demo(root)
    info = yaml.safe_load((root / "demo.yaml").read_text())
    assert info["classes"] == ["background", "grey_matter", "white_matter"]
    for split, zs in splits.items():
        images = sorted((root / split / "images").glob("*.png"))
        assert [int(p.stem[-3:]) for p in images] == sorted(zs)
        mask = np.asarray(Image.open(root / split / "masks" / images[len(images) // 2].name))
        image = np.asarray(Image.open(images[len(images) // 2]))
        assert image.shape == mask.shape == (233, 197) and image.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 1, 2}
        # White matter is brighter than grey matter on T1.
        assert image[mask == 2].mean() > image[mask == 1].mean()
    assert not list(tmp_path.glob(".demo.building-*"))
