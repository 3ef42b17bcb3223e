"""Dice, cross-entropy, focal, Tversky and their sums with Dice, on logits and integer targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, FocalLoss, TverskyLoss
from torch import nn

LossName = Literal["dice", "ce", "dice_ce", "focal", "tversky", "dice_focal", "dice_tversky"]

# The terms each loss sums: region terms (Dice, Tversky) and per-pixel terms (CE, focal).
LOSS_TERMS: dict[str, frozenset[str]] = {
    "dice": frozenset({"dice"}),
    "ce": frozenset({"ce"}),
    "dice_ce": frozenset({"dice", "ce"}),
    "focal": frozenset({"focal"}),
    "tversky": frozenset({"tversky"}),
    "dice_focal": frozenset({"dice", "focal"}),
    "dice_tversky": frozenset({"dice", "tversky"}),
}


class SegmentationLoss(nn.Module):
    """A weighted sum of Dice, CE, focal and Tversky terms on logits (B, K, *spatial) and targets (B, *spatial).

    The terms are MONAI's (PyTorch's for CE), each on softmax probabilities and one-hot targets:

    - Dice: soft Dice, smoothing 1e-5, batch-wise sums.
    - CE: ``F.cross_entropy`` (its class-weighted mean).
    - focal (Lin et al. 2017): MONAI's softmax ``FocalLoss``, ``-(1 - p_t)**gamma * log(p_t)`` averaged
      over pixels and classes; class weights scale each class's voxels. Every class counts, as in CE.
    - Tversky (Salehi et al. 2017): ``1 - TP / (TP + alpha FP + beta FN)`` per class, batch-wise sums,
      then the class-weighted mean as MONAI's Dice does; ``alpha = beta = 0.5`` is the Dice loss.

    MONAI's DiceCELoss and DiceFocalLoss would do two of the sums, but neither has ``ignore_index``, and
    DiceFocalLoss's focal term is a sigmoid (one-vs-rest) one even next to a softmax Dice; so the terms
    are composed here. Ignored pixels are removed from every term.

    Args:
        name: one of :data:`LossName`: ``dice``, ``ce``, ``dice_ce``, ``focal``, ``tversky``,
            ``dice_focal`` (Dice + focal), ``dice_tversky`` (Dice + Tversky).
        num_classes: K.
        class_weights: one weight per class, applied to every term.
        ignore_index: target value that contributes to no term.
        include_background: include class 0 in the Dice and Tversky terms.
        lambda_dice: weight of the Dice term, wherever the loss has one.
        lambda_ce: weight of the CE term.
        lambda_focal: weight of the focal term.
        lambda_tversky: weight of the Tversky term.
        focal_gamma: focusing exponent of the focal term (0 gives CE without class-weight normalisation).
        tversky_alpha: Tversky weight of false positives.
        tversky_beta: Tversky weight of false negatives (above ``alpha``: recall of small structures counts more).

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
        lambda_focal: float = 1.0,
        lambda_tversky: float = 1.0,
        focal_gamma: float = 2.0,
        tversky_alpha: float = 0.3,
        tversky_beta: float = 0.7,
    ) -> None:
        super().__init__()
        if name not in LOSS_TERMS:
            raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(get_args(LossName))}")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} values, expected num_classes={num_classes}")
        terms = LOSS_TERMS[name]
        self.name = name
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.lambda_dice = lambda_dice if "dice" in terms else 0.0
        self.lambda_ce = lambda_ce if "ce" in terms else 0.0
        self.lambda_focal = lambda_focal if "focal" in terms else 0.0
        self.lambda_tversky = lambda_tversky if "tversky" in terms else 0.0
        weight = torch.as_tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weight, persistent=False)
        region_weight = weight if include_background or weight is None else weight[1:]
        self.register_buffer("region_weights", region_weight, persistent=False)
        self.dice = DiceLoss(include_background=include_background, softmax=True, batch=True, weight=region_weight)
        # reduction "none": the class weights and the mean are applied in _tversky, as DiceLoss applies them.
        self.tversky = TverskyLoss(
            include_background=include_background,
            softmax=True,
            alpha=tversky_alpha,
            beta=tversky_beta,
            batch=True,
            reduction="none",
        )
        # reduction "none": MONAI's masked mean divides by the valid voxels, its unmasked one by voxels x
        # classes, so ignoring pixels would rescale the loss by K; _focal takes one mean for both cases.
        self.focal = FocalLoss(gamma=focal_gamma, weight=weight, reduction="none", use_softmax=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss (a scalar) of logits (B, K, *S) for integer targets (B, *S)."""
        loss = logits.new_zeros(())
        if self.lambda_ce:
            ce = F.cross_entropy(
                logits.float(),
                target,
                weight=self.class_weights,
                ignore_index=self.ignore_index if self.ignore_index is not None else -100,
            )
            loss = loss + self.lambda_ce * ce
        if not (self.lambda_focal or self.lambda_dice or self.lambda_tversky):
            return loss
        valid = None
        if self.ignore_index is not None:
            valid = target != self.ignore_index
            target = torch.where(valid, target, torch.zeros_like(target))
        onehot = F.one_hot(target, self.num_classes).movedim(-1, 1).to(logits.dtype)
        if self.lambda_focal:
            loss = loss + self.lambda_focal * self._focal(logits, onehot, valid)
        if self.lambda_dice:
            loss = loss + self.lambda_dice * self._region(self.dice, logits, onehot, valid)
        if self.lambda_tversky:
            loss = loss + self.lambda_tversky * self._tversky(logits, onehot, valid)
        return loss

    def _focal(self, logits: torch.Tensor, onehot: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        per_voxel = self.focal(logits.float(), onehot)  # (B, K, *S), class weights applied
        if valid is None:
            return per_voxel.mean()
        mask = valid.unsqueeze(1).to(per_voxel.dtype)
        return (per_voxel * mask).sum() / (mask.sum() * per_voxel.shape[1]).clamp(min=1.0)

    def _tversky(self, logits: torch.Tensor, onehot: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        per_class = self._region(self.tversky, logits, onehot, valid).flatten()
        if self.region_weights is not None:
            per_class = per_class * self.region_weights.to(per_class)
        return per_class.mean()

    def _region(
        self, term: DiceLoss | TverskyLoss, logits: torch.Tensor, onehot: torch.Tensor, valid: torch.Tensor | None
    ) -> torch.Tensor:
        if valid is None:
            return term(logits.float(), onehot)
        # Zero both the prediction and the target at ignored pixels: they add nothing to the sums.
        mask = valid.unsqueeze(1).to(logits.dtype)
        probs = torch.softmax(logits.float(), dim=1) * mask
        softmax, term.softmax = term.softmax, False
        try:
            return term(probs, onehot * mask)
        finally:
            term.softmax = softmax
