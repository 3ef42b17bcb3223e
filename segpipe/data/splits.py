"""Case-level train/val/test splits: one seeded shuffle (plain, per class, k-fold) and split files."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import yaml
from sklearn.model_selection import KFold

from segpipe.errors import DataError

SPLITS = ("train", "val", "test")
# Splits each Lightning stage reads; without a trainer (or for another stage), all of them.
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}
T = TypeVar("T")
DrawnFirst = Literal["test", "val"]


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Refuse held-out shares that leave no training cases.

    Raises:
        ValueError: for fractions outside [0, 1) or summing to 1 or more.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) "
            "and sum to less than 1"
        )


def shuffled_split(
    items: Sequence[T],
    val_fraction: float,
    test_fraction: float,
    rng: np.random.Generator,
    drawn_first: DrawnFirst = "test",
) -> dict[str, list[T]]:
    """The one seeded split: permute ``items`` with ``rng`` and cut the permutation into held-out and train.

    The first ``round(n * fraction)`` permuted items go to ``drawn_first``, the next ones to the other
    held-out split, the rest to train; each list keeps the permuted order. ``drawn_first`` exists so that
    every DataModule keeps the splits its seeds always gave: volumes draw the test cases first (then they
    stay the same for every fold), 2D folders and classification classes draw the val cases first.

    Raises:
        ValueError: for fractions outside [0, 1) or summing to 1 or more.
    """
    check_fractions(val_fraction, test_fraction)
    order = rng.permutation(len(items))
    fractions = {"val": val_fraction, "test": test_fraction}
    second: DrawnFirst = "val" if drawn_first == "test" else "test"
    n_first = round(len(items) * fractions[drawn_first])
    n_second = round(len(items) * fractions[second])
    shuffled = [items[i] for i in order]
    return {
        drawn_first: shuffled[:n_first],
        second: shuffled[n_first : n_first + n_second],
        "train": shuffled[n_first + n_second :],
    }


def split_cases(
    items: Sequence[T], val_fraction: float, test_fraction: float, seed: int, key: Callable[[T], str]
) -> dict[str, list[T]]:
    """Seeded split of 2D cases (val drawn first, see :func:`shuffled_split`); each split sorted by ``key``.

    Raises:
        ValueError: for fractions outside [0, 1) or summing to 1 or more.
    """
    splits = shuffled_split(items, val_fraction, test_fraction, np.random.default_rng(seed), drawn_first="val")
    return {split: sorted(splits[split], key=key) for split in SPLITS}


def stratified_split(
    items: Sequence[tuple[T, Hashable]], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[tuple[T, Hashable]]]:
    """Split each class (the second element of each item) separately, so every split keeps the class
    proportions; the classes are taken in sorted order from one seeded generator, val drawn first.

    Raises:
        ValueError: for fractions outside [0, 1) or summing to 1 or more.
    """
    check_fractions(val_fraction, test_fraction)
    rng = np.random.default_rng(seed)
    splits: dict[str, list[tuple[T, Hashable]]] = {s: [] for s in SPLITS}
    for label in sorted({label for _, label in items}):  # type: ignore[type-var]
        members = [item for item in items if item[1] == label]
        for split, chosen in shuffled_split(members, val_fraction, test_fraction, rng, drawn_first="val").items():
            splits[split] += chosen
    return splits


def split_names(
    names: Iterable[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    fold: int | None = None,
    num_folds: int = 5,
) -> dict[str, list[str]]:
    """Seeded case-level split into train/val/test; each name lands in exactly one split (sorted).

    The test cases are drawn first, so they are the same for every fold. Without ``fold``, a
    ``val_fraction`` share of the cases is the val split; with it, the remaining cases are cut into
    ``num_folds`` folds (scikit-learn ``KFold``, shuffled with ``seed``) and fold ``fold`` is the val split.

    Raises:
        ValueError: for fractions outside [0, 1) or summing to 1 or more, or fewer cases than folds.
    """
    check_fractions(val_fraction, test_fraction)
    names = sorted(names)
    # Without folds the val cases come from the same permutation; with folds only the test cut is used.
    splits = shuffled_split(
        names, 0.0 if fold is not None else val_fraction, test_fraction, np.random.default_rng(seed)
    )
    if fold is not None:
        splits["train"], splits["val"] = cut_fold(splits["train"], seed, fold, num_folds)
    return {split: sorted(splits[split]) for split in SPLITS}


def cut_fold(names: Iterable[str], seed: int, fold: int, num_folds: int) -> tuple[list[str], list[str]]:
    """(train, val) names of fold ``fold`` when ``names`` are cut into ``num_folds`` folds (scikit-learn
    ``KFold``, shuffled with ``seed``, over the sorted names).

    Raises:
        ValueError: for fewer names than folds.
    """
    rest = sorted(names)
    if len(rest) < num_folds:
        raise ValueError(f"{len(rest)} cases (after the test split) cannot be cut into {num_folds} folds")
    train_idx, val_idx = list(KFold(num_folds, shuffle=True, random_state=seed).split(rest))[fold]
    return [rest[i] for i in train_idx], [rest[i] for i in val_idx]


def check_folds(fold: int | None, num_folds: int) -> None:
    """Refuse a cross-validation setting that names no fold.

    Raises:
        ValueError: for ``num_folds < 2`` or ``fold`` outside 0..num_folds-1.
    """
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2, got {num_folds}")
    if fold is not None and not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in 0..{num_folds - 1} (num_folds={num_folds}), got {fold}")


def named_splits(
    items: Sequence[T],
    name: Callable[[T], str],
    root: Path,
    split_file: Path | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    fold: int | None = None,
    num_folds: int = 5,
) -> dict[str, list[T]]:
    """The items of each split, by name: from ``split_file`` when given (unlisted items are left out; with
    ``fold``, its train and val cases together are cut into ``num_folds`` folds and its test cases kept),
    else :func:`split_names` (seeded, optionally one fold of ``num_folds``).

    Raises:
        DataError: naming ``split_file`` when it is bad, or ``root`` for bad fractions or too few cases.
    """
    by_name = {name(item): item for item in items}
    if split_file is not None:
        names = read_split_file(split_file, list(by_name))
        if fold is not None:
            try:
                names["train"], names["val"] = cut_fold(names["train"] + names["val"], seed, fold, num_folds)
            except ValueError as err:
                raise DataError(split_file, str(err)) from None
    else:
        try:
            names = split_names(by_name, val_fraction, test_fraction, seed, fold, num_folds)
        except ValueError as err:
            raise DataError(root, str(err)) from None
    return {split: [by_name[n] for n in names[split]] for split in SPLITS}


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
