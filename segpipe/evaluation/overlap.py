"""Per-class Dice and IoU accumulated over a whole split."""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassStatScores


class OverlapScores(MulticlassStatScores):
    """Per-class Dice ``2TP / (2TP + FP + FN)`` and IoU ``TP / (TP + FP + FN)``.

    True/false positives and negatives are summed over every pixel of every batch (and across DDP
    ranks by torchmetrics' sum reduction) before the ratio is taken, so the score is the Dice of the
    whole split, not a mean of per-batch means. A class absent from both prediction and reference
    scores NaN and is left out of the foreground mean.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        super().__init__(num_classes=num_classes, average=None, multidim_average="global", ignore_index=ignore_index)

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        tp, fp, fn = self.tp.float(), self.fp.float(), self.fn.float()
        denominator = tp + fp + fn
        nan = torch.full_like(tp, float("nan"))
        dice = torch.where(denominator > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), nan)
        iou = torch.where(denominator > 0, tp / denominator.clamp_min(1), nan)
        return {"dice": dice, "iou": iou}
