"""Shared fixtures: tiny, seeded, generated datasets (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Keep the tests' MLflow and Lightning chatter and threads small on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def disc_case(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with a bright disc (class 1) and a dark square (class 2)."""
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.integers(height // 4, 3 * height // 4), rng.integers(width // 4, 3 * width // 4)
    r = rng.integers(min(height, width) // 8, min(height, width) // 4)
    mask = np.zeros((height, width), np.uint8)
    mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 1
    sy, sx = rng.integers(0, height - 6), rng.integers(0, width - 6)
    mask[sy : sy + 6, sx : sx + 6] = 2
    image = np.full((height, width), 100.0)
    image[mask == 1] = 200
    image[mask == 2] = 30
    image += rng.normal(0, 10, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_dataset(root: Path, n: int, height: int = 37, width: int = 33, seed: int = 0) -> Path:
    """Flat layout: ``root/images/case_XX.png`` and ``root/masks/case_XX.png``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, mask = disc_case(rng, height, width)
        Image.fromarray(image).save(root / "images" / f"case_{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"case_{i:02d}.png")
    return root


def write_classes(root: Path, per_class: int = 6, size: tuple[int, int] = (33, 37)) -> Path:
    """Two classes: dark and bright noisy images."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("dark", "bright")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = np.clip(rng.normal(60 + 120 * label, 15, size), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / name / f"img_{i}.png")
    return root


@pytest.fixture
def flat_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data", n=12)


@pytest.fixture
def split_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for i, split in enumerate(("train", "val", "test")):
        write_dataset(root / split, n=8 if split == "train" else 3, seed=i)
    return root


@pytest.fixture(autouse=True)
def _restore_determinism():
    """``Trainer(deterministic=True)`` sets ``torch.use_deterministic_algorithms`` for the whole process."""
    import torch  # here, not at the top: OMP_NUM_THREADS above must be set before torch is imported

    enabled = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(enabled)
