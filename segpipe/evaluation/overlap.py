"""Per-class Dice and IoU accumulated over a whole split."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.classification import MulticlassStatScores


class OverlapScores(MulticlassStatScores):
    """Per-class Dice ``2TP / (2TP + FP + FN)`` and IoU ``TP / (TP + FP + FN)``, and their foreground mean.

    True/false positives and negatives are summed over every pixel of every batch (and across DDP
    ranks by torchmetrics' sum reduction) before the ratio is taken, so the score is the Dice of the
    whole split, not a mean of per-batch means. A class absent from both prediction and reference
    scores NaN: it is left out of :meth:`compute` and of the foreground mean.

    ``update(prediction, reference)`` takes label maps of equal shape (B, *spatial).

    Args:
        num_classes: classes including background (label values 0..num_classes-1).
        ignore_index: label value of the reference left out of every count.
        class_names: names used in the keys of :meth:`compute` (default ``class0``, ``class1``, ...).

    Raises:
        ValueError: if ``class_names`` does not have ``num_classes`` entries.
    """

    def __init__(
        self, num_classes: int, ignore_index: int | None = None, class_names: Sequence[str] | None = None
    ) -> None:
        super().__init__(num_classes=num_classes, average=None, multidim_average="global", ignore_index=ignore_index)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names, expected num_classes={num_classes}")
        self.class_names = list(class_names or [f"class{i}" for i in range(num_classes)])

    def per_class(self) -> dict[str, torch.Tensor]:
        """``{"dice": (K,), "iou": (K,)}`` over everything seen since the last reset; NaN for absent classes."""
        tp, fp, fn = self.tp.float(), self.fp.float(), self.fn.float()
        denominator = tp + fp + fn
        nan = torch.full_like(tp, float("nan"))
        dice = torch.where(denominator > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), nan)
        iou = torch.where(denominator > 0, tp / denominator.clamp_min(1), nan)
        return {"dice": dice, "iou": iou}

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Scores by class name and by class index, absent classes left out: ``dice_<class>``,
        ``iou_<class>``, ``dice_c<k>``, ``iou_c<k>``; and the foreground means ``dice`` (=
        ``dice_fg_mean``) and ``iou_fg_mean``.

        The index names (``dice_c1``) and the means compare across datasets whose classes are named
        differently. Foreground is classes 1.. (the single class when ``num_classes`` is 1).
        """
        named: dict[str, torch.Tensor] = {}
        for metric, values in self.per_class().items():
            for k, (name, value) in enumerate(zip(self.class_names, values, strict=True)):
                if not torch.isnan(value):
                    named[f"{metric}_{name}"] = named[f"{metric}_c{k}"] = value
            named[f"{metric}_fg_mean"] = torch.nanmean(values[1:] if len(values) > 1 else values)
        named["dice"] = named["dice_fg_mean"]
        return named
