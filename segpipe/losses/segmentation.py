"""Dice, cross-entropy and Dice + CE on logits and integer targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

LossName = Literal["dice", "ce", "dice_ce"]


class SegmentationLoss(nn.Module):
    """``lambda_dice * Dice + lambda_ce * CE`` on logits (B, K, *spatial) and targets (B, *spatial).

    The Dice term is MONAI's soft Dice (softmax, one-hot target, smoothing 1e-5, batch-wise sums);
    the CE term is PyTorch's. MONAI's DiceCELoss would do the sum, but it has no ``ignore_index``:
    ignored pixels are removed here from both terms, so the two are composed by hand.

    Args:
        name: ``dice``, ``ce`` or ``dice_ce``.
        num_classes: K.
        class_weights: one weight per class, applied to both terms.
        ignore_index: target value that contributes to neither term.
        include_background: include class 0 in the Dice term.
        lambda_dice: weight of the Dice term in ``dice_ce``.
        lambda_ce: weight of the CE term in ``dice_ce``.

    Raises:
        ValueError: for an unknown ``name`` or ``class_weights`` of the wrong length.
    """

    def __init__(
        self,
        name: LossName = "dice_ce",
        num_classes: int = 2,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        include_background: bool = True,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
    ) -> None:
        super().__init__()
        if name not in ("dice", "ce", "dice_ce"):
            raise ValueError(f"unknown loss {name!r}; choose 'dice', 'ce' or 'dice_ce'")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} values, expected num_classes={num_classes}")
        self.name = name
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.lambda_dice = lambda_dice if name != "ce" else 0.0
        self.lambda_ce = lambda_ce if name != "dice" else 0.0
        weight = torch.as_tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weight, persistent=False)
        dice_weight = weight if include_background or weight is None else weight[1:]
        self.dice = DiceLoss(
            include_background=include_background,
            softmax=True,
            batch=True,
            weight=dice_weight,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros(())
        if self.lambda_ce:
            ce = F.cross_entropy(
                logits.float(),
                target,
                weight=self.class_weights,
                ignore_index=self.ignore_index if self.ignore_index is not None else -100,
            )
            loss = loss + self.lambda_ce * ce
        if self.lambda_dice:
            valid = None
            if self.ignore_index is not None:
                valid = target != self.ignore_index
                target = torch.where(valid, target, torch.zeros_like(target))
            onehot = F.one_hot(target, self.num_classes).movedim(-1, 1).to(logits.dtype)
            if valid is not None:
                # Zero both the prediction and the target at ignored pixels: they add nothing to the sums.
                mask = valid.unsqueeze(1).to(logits.dtype)
                probs = torch.softmax(logits.float(), dim=1) * mask
                onehot = onehot * mask
                dice = self._dice_on_probs(probs, onehot)
            else:
                dice = self.dice(logits.float(), onehot)
            loss = loss + self.lambda_dice * dice
        return loss

    def _dice_on_probs(self, probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        # Same loss as self.dice, given probabilities instead of logits.
        softmax, self.dice.softmax = self.dice.softmax, False
        try:
            return self.dice(probs, onehot)
        finally:
            self.dice.softmax = softmax
