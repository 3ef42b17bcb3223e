"""Carry the global random generators in checkpoints, so a resumed run draws what the uninterrupted one drew."""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

CHECKPOINT_KEY = "random_state"


def collect_random_state() -> dict[str, Any]:
    """torch (CPU and current CUDA device), NumPy and Python generator states, as tensors and plain types.

    Lightning's ``_collect_rng_states`` keeps NumPy's state as an ndarray, which ``weights_only`` loading
    refuses; here it is a tensor.
    """
    kind, keys, position, has_gauss, cached = np.random.get_state()
    _, python_state, python_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position)},
        "numpy_gauss": [int(has_gauss), float(cached)],
        "python": {"state": list(python_state), "gauss": python_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_random_state(state: dict[str, Any]) -> None:
    """Set the generators to a state from :func:`collect_random_state`."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    has_gauss, cached = state["numpy_gauss"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"], has_gauss, cached))
    random.setstate((3, tuple(state["python"]["state"]), state["python"]["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class RandomStateInCheckpoint(pl.Callback):
    """Save the global random state with every checkpoint; restore it at the first training batch of a resume.

    That batch is where the saved state belongs: the checkpoint is written after a training step or an
    epoch, and nothing between that point and the next batch draws from the global generators (the
    training loader has its own), so dropout continues exactly as in the uninterrupted run. Every rank
    restores rank 0's state, which is the state they all share: ``seed_everything`` seeds each rank alike.
    Data augmentation does not depend on this: each sample's seed comes from the sampler.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CHECKPOINT_KEY] = collect_random_state()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._pending = checkpoint.get(CHECKPOINT_KEY)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is not None:
            restore_random_state(self._pending)
            self._pending = None
