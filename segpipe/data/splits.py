"""Case-level train/val/test splits: seeded shuffles, k-fold cross-validation, split files."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import yaml
from sklearn.model_selection import KFold

from segpipe.errors import DataError

SPLITS = ("train", "val", "test")


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
