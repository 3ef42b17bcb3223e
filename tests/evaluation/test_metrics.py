import math

import pytest
import torch
from torchmetrics import MetricCollection

from segpipe.evaluation import OverlapScores


def test_dice_is_accumulated_over_the_split_not_averaged_per_batch():
    scores = OverlapScores(num_classes=2)
    # Batch 1: class 1 has TP=1, FP=0, FN=1. Batch 2: TP=3, FP=1, FN=0.
    scores.update(torch.tensor([[1, 0, 0, 0]]), torch.tensor([[1, 1, 0, 0]]))
    scores.update(torch.tensor([[1, 1, 1, 1]]), torch.tensor([[1, 1, 1, 0]]))
    result = scores.per_class()
    # Global: TP=4, FP=1, FN=1 -> Dice 8/10, IoU 4/6 (the mean of per-batch Dice would be 0.762).
    assert result["dice"][1].item() == pytest.approx(0.8)
    assert result["iou"][1].item() == pytest.approx(4 / 6)
    # Class 0: TP=2, FP=1, FN=1 -> Dice 4/6.
    assert result["dice"][0].item() == pytest.approx(4 / 6)


def test_absent_class_scores_nan_and_ignore_index_is_skipped():
    scores = OverlapScores(num_classes=3, ignore_index=255)
    scores.update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 255]]))
    result = scores.per_class()
    assert math.isnan(result["dice"][2].item())
    assert result["dice"][1].item() == pytest.approx(1.0)
    named = scores.compute()
    assert not {"dice_class2", "iou_class2", "dice_c2", "iou_c2"} & set(named)
    assert named["dice"].item() == pytest.approx(1.0)  # the absent class is out of the foreground mean
    assert named["dice_fg_mean"].item() == named["iou_fg_mean"].item() == pytest.approx(1.0)


def _reference_scores(batches: list[tuple[torch.Tensor, torch.Tensor]], names: list[str]) -> dict[str, float]:
    """The split-level formula of segpipe before the MetricCollection: TP/FP/FN summed over every pixel of
    every batch, then Dice = 2TP / (2TP + FP + FN), IoU = TP / (TP + FP + FN), foreground mean of Dice."""
    tp, fp, fn = (torch.zeros(len(names), dtype=torch.float64) for _ in range(3))
    for prediction, reference in batches:
        for k in range(len(names)):
            tp[k] += ((prediction == k) & (reference == k)).sum()
            fp[k] += ((prediction == k) & (reference != k)).sum()
            fn[k] += ((prediction != k) & (reference == k)).sum()
    dice, iou = 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)
    out = {}
    for metric, values in (("dice", dice), ("iou", iou)):
        out |= {f"val/{metric}_{n}": float(v) for n, v in zip(names, values, strict=True)}
        out |= {f"val/{metric}_c{k}": float(v) for k, v in enumerate(values)}
        out[f"val/{metric}_fg_mean"] = float(values[1:].mean())
    out["val/dice"] = out["val/dice_fg_mean"]
    return out


def test_stage_collection_logs_the_names_and_values_of_the_split_formula():
    names = ["background", "grey_matter", "white_matter"]
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randint(0, 3, (2, 33, 37), generator=generator), torch.randint(0, 3, (2, 33, 37), generator=generator))
        for _ in range(4)
    ]
    collection = MetricCollection({"overlap": OverlapScores(3, class_names=names)}).clone(prefix="val/")
    for prediction, reference in batches:
        collection.update(prediction, reference)
    result = {key: value.item() for key, value in collection.compute().items()}
    expected = _reference_scores(batches, names)
    assert set(result) == set(expected) and len(result) == 2 * (2 * len(names) + 1) + 1
    assert result == pytest.approx(expected, rel=1e-6, abs=0)
    # The same score by class name and by class index, so that runs on differently named classes compare.
    assert result["val/dice_grey_matter"] == result["val/dice_c1"] and result["val/dice"] == result["val/dice_fg_mean"]


def test_class_names_must_match_the_classes():
    with pytest.raises(ValueError, match="class_names has 2 names, expected num_classes=3"):
        OverlapScores(3, class_names=["a", "b"])
