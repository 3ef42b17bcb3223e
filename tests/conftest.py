"""Shared fixtures: tiny, seeded, generated datasets (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

# Lightning binds its log handler to the sys.stderr of its first import: imported here, before any test's
# output capture, so that a test importing it first does not leave the handler on a closed capture stream.
import lightning.pytorch  # noqa: F401
import pytest
from builders import write_dataset

# Keep the tests' MLflow and Lightning chatter and threads small on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


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
