import math

import pytest
import torch

from segpipe.evaluation import OverlapScores


def test_dice_is_accumulated_over_the_split_not_averaged_per_batch():
    scores = OverlapScores(num_classes=2)
    # Batch 1: class 1 has TP=1, FP=0, FN=1. Batch 2: TP=3, FP=1, FN=0.
    scores.update(torch.tensor([[1, 0, 0, 0]]), torch.tensor([[1, 1, 0, 0]]))
    scores.update(torch.tensor([[1, 1, 1, 1]]), torch.tensor([[1, 1, 1, 0]]))
    result = scores.compute()
    # Global: TP=4, FP=1, FN=1 -> Dice 8/10, IoU 4/6 (the mean of per-batch Dice would be 0.762).
    assert result["dice"][1].item() == pytest.approx(0.8)
    assert result["iou"][1].item() == pytest.approx(4 / 6)
    # Class 0: TP=2, FP=1, FN=1 -> Dice 4/6.
    assert result["dice"][0].item() == pytest.approx(4 / 6)


def test_absent_class_scores_nan_and_ignore_index_is_skipped():
    scores = OverlapScores(num_classes=3, ignore_index=255)
    scores.update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 255]]))
    result = scores.compute()
    assert math.isnan(result["dice"][2].item())
    assert result["dice"][1].item() == pytest.approx(1.0)
