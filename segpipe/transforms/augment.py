"""Build albumentations pipelines from the plain lists of dicts written in YAML configs.

Each entry names an albumentations transform and its arguments, e.g.::

    train_transforms:
      - {name: HorizontalFlip, p: 0.5}
      - {name: Affine, rotate: [-10, 10], scale: [0.9, 1.1], p: 0.5}
      - {name: OneOf, p: 0.3, transforms: [{name: GaussNoise}, {name: GaussianBlur}]}
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A


def _build_one(spec: Mapping[str, Any]) -> A.BasicTransform | A.BaseCompose:
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(f"each transform must be a mapping with a 'name' key, got {spec!r}")
    kwargs = dict(spec)
    name = kwargs.pop("name")
    cls = getattr(A, name, None)
    if cls is None or not isinstance(cls, type):
        names = [n for n in dir(A) if n[:1].isupper()]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown albumentations transform {name!r}{hint}")
    if "transforms" in kwargs:
        kwargs["transforms"] = [_build_one(s) for s in kwargs["transforms"]]
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid arguments for albumentations.{name}: {err}") from None


def build_augmentations(specs: Sequence[Mapping[str, Any]] | None, seed: int | None = None) -> A.Compose:
    """Compose the transforms listed in ``specs`` (empty list or None: identity).

    Raises:
        ValueError: for an unknown transform name (with a suggestion) or bad arguments.
    """
    transforms = [_build_one(s) for s in specs or []]
    return A.Compose(transforms, seed=seed)
