import math

import pytest
import torch
import torch.nn.functional as F

from segpipe.losses import SegmentationLoss


def confident_logits(labels: torch.Tensor, num_classes: int, scale: float = 50.0) -> torch.Tensor:
    return F.one_hot(labels, num_classes).movedim(-1, 1).float() * scale


def test_perfect_prediction_has_near_zero_loss():
    target = torch.tensor([[[0, 1], [1, 2]]])
    logits = confident_logits(target, 3)
    for name in ("dice", "ce", "dice_ce"):
        assert SegmentationLoss(name, 3)(logits, target).item() == pytest.approx(0.0, abs=1e-5)


def test_disjoint_prediction_has_dice_loss_one():
    target = torch.tensor([[[0, 0], [1, 1]]])
    logits = confident_logits(1 - target, 2)
    assert SegmentationLoss("dice", 2)(logits, target).item() == pytest.approx(1.0, abs=1e-4)


def test_worked_case_matches_hand_computation():
    # Two pixels, two classes. Softmax probabilities of class 1: p = [0.8, 0.3]; targets [1, 0].
    p1 = torch.tensor([0.8, 0.3])
    logits = torch.stack([torch.zeros(2), torch.log(p1 / (1 - p1))]).reshape(1, 2, 1, 2)
    target = torch.tensor([[[1, 0]]])
    # Class 1: 2*0.8 / (0.8+0.3 + 1) ; class 0: 2*0.7 / (0.2+0.7 + 1); smoothing 1e-5 on both sides.
    s = 1e-5
    dice1 = (2 * 0.8 + s) / (1.1 + 1 + s)
    dice0 = (2 * 0.7 + s) / (0.9 + 1 + s)
    expected_dice = 1 - (dice0 + dice1) / 2
    expected_ce = -(math.log(0.8) + math.log(0.7)) / 2
    assert SegmentationLoss("dice", 2)(logits, target).item() == pytest.approx(expected_dice, rel=1e-5)
    assert SegmentationLoss("ce", 2)(logits, target).item() == pytest.approx(expected_ce, rel=1e-5)
    combined = SegmentationLoss("dice_ce", 2, lambda_dice=0.5, lambda_ce=2.0)(logits, target).item()
    assert combined == pytest.approx(0.5 * expected_dice + 2.0 * expected_ce, rel=1e-5)


def test_class_weights_scale_cross_entropy_as_torch_does():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    weights = [0.2, 1.0, 3.0]
    expected = F.cross_entropy(logits, target, weight=torch.tensor(weights))
    assert SegmentationLoss("ce", 3, class_weights=weights)(logits, target).item() == pytest.approx(
        expected.item(), rel=1e-6
    )


def test_ignore_index_pixels_do_not_change_the_loss():
    target = torch.tensor([[[0, 1, 1, 0]]])
    logits = confident_logits(target, 2, scale=2.0)
    base = SegmentationLoss("dice_ce", 2, ignore_index=255)(logits, target)
    # Append a pixel labelled 255 with a confidently wrong prediction: the loss must not move.
    target_ext = torch.tensor([[[0, 1, 1, 0, 255]]])
    extra = torch.tensor([[[[-9.0]], [[9.0]]]]).reshape(1, 2, 1, 1)
    logits_ext = torch.cat([logits, extra], dim=-1)
    ext = SegmentationLoss("dice_ce", 2, ignore_index=255)(logits_ext, target_ext)
    assert ext.item() == pytest.approx(base.item(), rel=1e-5)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown loss"):
        SegmentationLoss("lovasz", 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="class_weights has 2 values"):
        SegmentationLoss("ce", 3, class_weights=[1.0, 2.0])
