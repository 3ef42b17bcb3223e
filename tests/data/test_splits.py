"""The one seeded splitter gives, for each DataModule, the splits its seed gave before it was shared."""

from operator import attrgetter
from pathlib import Path

import numpy as np
import pytest
import yaml

from segpipe.data.sources.pairing import Case
from segpipe.data.splits import named_splits, shuffled_split, split_cases, split_names, stratified_split
from segpipe.errors import DataError

NAMES = [f"c{i:02d}" for i in range(11)]


def test_volume_splits_draw_the_test_cases_first():
    assert split_names(NAMES, 0.2, 0.3, seed=5) == {
        "train": ["c00", "c04", "c05", "c06", "c08", "c09"],
        "val": ["c02", "c03"],
        "test": ["c01", "c07", "c10"],
    }
    assert split_names(NAMES, 0.2, 0.2, seed=5, fold=1, num_folds=3) == {
        "train": ["c02", "c03", "c04", "c05", "c06", "c09"],
        "val": ["c00", "c01", "c08"],
        "test": ["c07", "c10"],
    }


def test_folder_splits_draw_the_val_cases_first():
    cases = [Case(name, Path(name)) for name in NAMES]
    splits = split_cases(cases, 0.2, 0.3, seed=5, key=attrgetter("name"))
    assert {split: [c.name for c in chosen] for split, chosen in splits.items()} == {
        "val": ["c07", "c10"],
        "test": ["c01", "c02", "c03"],
        "train": ["c00", "c04", "c05", "c06", "c08", "c09"],
    }


def test_stratified_splits_keep_the_drawn_order_per_class():
    items = [(f"{label}{i}", label) for label in range(2) for i in range(6)]
    splits = stratified_split(items, 0.2, 0.3, seed=5)
    assert {split: [name for name, _ in chosen] for split, chosen in splits.items()} == {
        "train": ["03", "05", "00", "13", "12", "15"],
        "val": ["01", "14"],
        "test": ["04", "02", "10", "11"],
    }


@pytest.mark.parametrize("drawn_first", ["test", "val"])
def test_every_item_lands_in_exactly_one_split(drawn_first):
    splits = shuffled_split(NAMES, 0.25, 0.25, np.random.default_rng(0), drawn_first=drawn_first)
    assert sorted(name for chosen in splits.values() for name in chosen) == NAMES
    assert [len(splits[s]) for s in ("val", "test")] == [3, 3]


def test_bad_fractions_are_refused_by_every_splitter():
    with pytest.raises(ValueError, match=r"val_fraction \(0\.6\) and test_fraction \(0\.5\)"):
        split_names(NAMES, 0.6, 0.5, seed=0, fold=0)
    with pytest.raises(ValueError, match="sum to less than 1"):
        split_cases(NAMES, 0.6, 0.5, seed=0, key=str)


def test_a_fold_of_a_split_file_cuts_its_train_and_val_cases_and_keeps_its_test_cases(tmp_path: Path):
    names = [f"case{i}" for i in range(10)]
    split_file = tmp_path / "split.yaml"
    split_file.write_text(yaml.safe_dump({"train": names[:6], "val": names[6:8], "test": names[8:]}))
    folds = [named_splits(names, str, tmp_path, split_file, 0.2, 0.0, 3, fold, 4) for fold in range(4)]
    assert all(f["test"] == ["case8", "case9"] for f in folds)
    vals = [v for f in folds for v in f["val"]]
    assert sorted(vals) == names[:8]  # every train/val case validates once across the folds
    for f in folds:
        assert sorted(f["train"] + f["val"]) == names[:8] and not set(f["train"]) & set(f["val"])
    with pytest.raises(DataError, match="cannot be cut into 9 folds"):
        named_splits(names, str, tmp_path, split_file, 0.2, 0.0, 3, 0, 9)
