"""Focal and Tversky losses and their sums with Dice: values against MONAI and numpy, weights, ignore_index."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, FocalLoss, TverskyLoss

from segpipe.losses import SegmentationLoss
from segpipe.tasks import SegmentationTask


def example(num_classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, num_classes, 5, 7, generator=gen)
    return logits, torch.randint(0, num_classes, (2, 5, 7), generator=gen)


def onehot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(target, num_classes).movedim(-1, 1).float()


def test_focal_equals_a_numpy_formula():
    logits, target = example()
    probs = torch.softmax(logits, 1).numpy()
    p_true = np.take_along_axis(probs, target.numpy()[:, None], axis=1)
    # MONAI's mean runs over pixels and classes; only the true class is non-zero.
    expected = (-((1 - p_true) ** 2) * np.log(p_true)).sum() / probs.size
    assert SegmentationLoss("focal", 3)(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_focal_gamma_zero_with_weights_equals_monai_called_directly():
    logits, target = example()
    weights = [0.2, 1.0, 3.0]
    loss = SegmentationLoss("focal", 3, class_weights=weights, focal_gamma=0.0)(logits, target)
    direct = FocalLoss(to_onehot_y=True, gamma=0.0, weight=weights, use_softmax=True)(logits, target[:, None])
    assert loss.item() == pytest.approx(direct.item(), rel=1e-6)
    # gamma 0 is a CE summed over classes per pixel: mean of w_y * -log p_y over pixels, divided by K
    log_p = torch.log_softmax(logits, 1).gather(1, target[:, None])
    by_hand = -(torch.tensor(weights)[target][:, None] * log_p).mean() / 3
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_tversky_equals_monai_called_directly():
    logits, target = example()
    loss = SegmentationLoss("tversky", 3, tversky_alpha=0.3, tversky_beta=0.7)(logits, target)
    direct = TverskyLoss(softmax=True, alpha=0.3, beta=0.7, batch=True)(logits, onehot(target, 3))
    assert loss.item() == pytest.approx(direct.item(), rel=1e-6)


def test_tversky_with_equal_alpha_and_beta_is_the_dice_loss():
    logits, target = example()
    weights = [0.5, 1.0, 2.0]
    for class_weights in (None, weights):
        tversky = SegmentationLoss("tversky", 3, class_weights, tversky_alpha=0.5, tversky_beta=0.5)
        dice = SegmentationLoss("dice", 3, class_weights)
        # equal up to the 1e-5 smoothing, which Dice adds to 2 TP and Tversky to TP
        assert tversky(logits, target).item() == pytest.approx(dice(logits, target).item(), abs=1e-5)


def test_tversky_with_larger_beta_penalises_misses_more_and_false_alarms_less():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2, :2] = 1  # a 4-pixel structure
    half = target.clone()
    half[0, 1, :2] = 0  # found 2 of its 4 pixels: TP 2, FN 2
    over = target.clone()
    over[0, 2, :2] = 1  # found it and 2 pixels more: TP 4, FP 2

    def tversky(prediction: torch.Tensor, alpha: float, beta: float) -> float:
        loss = SegmentationLoss("tversky", 2, include_background=False, tversky_alpha=alpha, tversky_beta=beta)
        return loss(onehot(prediction, 2) * 50.0, target).item()

    assert tversky(half, 0.3, 0.7) == pytest.approx(1 - 2 / (2 + 0.7 * 2), abs=1e-4)
    assert tversky(half, 0.5, 0.5) == pytest.approx(1 - 2 / 3, abs=1e-4)
    assert tversky(over, 0.3, 0.7) == pytest.approx(1 - 4 / (4 + 0.3 * 2), abs=1e-4)
    assert tversky(over, 0.5, 0.5) == pytest.approx(1 - 4 / 5, abs=1e-4)


def test_tversky_class_weights_scale_each_class_as_dice_weights_do():
    logits, target = example()
    weights = torch.tensor([0.2, 1.0, 3.0])
    per_class = TverskyLoss(softmax=True, batch=True, reduction="none")(logits, onehot(target, 3)).flatten()
    expected = (per_class * weights).mean()
    loss = SegmentationLoss("tversky", 3, weights.tolist(), tversky_alpha=0.5, tversky_beta=0.5)(logits, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    without_background = SegmentationLoss(
        "tversky", 3, weights.tolist(), include_background=False, tversky_alpha=0.5, tversky_beta=0.5
    )(logits, target)
    assert without_background.item() == pytest.approx((per_class[1:] * weights[1:]).mean().item(), rel=1e-6)


@pytest.mark.parametrize(("name", "second"), [("dice_focal", "focal"), ("dice_tversky", "tversky")])
def test_sums_with_dice_are_the_weighted_sums_of_the_terms(name: str, second: str):
    logits, target = example()
    dice = DiceLoss(softmax=True, batch=True)(logits, onehot(target, 3)).item()
    term = SegmentationLoss(second, 3)(logits, target).item()  # type: ignore[arg-type]
    lambdas = {"lambda_dice": 0.5, f"lambda_{second}": 2.0}
    loss = SegmentationLoss(name, 3, **lambdas)(logits, target).item()  # type: ignore[arg-type]
    assert loss == pytest.approx(0.5 * dice + 2.0 * term, rel=1e-5)


def test_dice_focal_equals_monai_dice_plus_softmax_focal():
    logits, target = example()
    weights = [0.2, 1.0, 3.0]
    dice = DiceLoss(softmax=True, batch=True, weight=weights)(logits, onehot(target, 3))
    focal = FocalLoss(to_onehot_y=True, weight=weights, use_softmax=True)(logits, target[:, None])
    loss = SegmentationLoss("dice_focal", 3, class_weights=weights)(logits, target)
    assert loss.item() == pytest.approx((dice + focal).item(), rel=1e-6)


@pytest.mark.parametrize("name", ["focal", "tversky", "dice_focal", "dice_tversky"])
def test_ignored_pixels_do_not_change_the_loss(name: str):
    logits, target = example()
    # Append a column labelled 255 with confidently wrong predictions: the loss must not move.
    target_ext = torch.cat([target, torch.full((2, 5, 1), 255)], dim=-1)
    wrong = torch.tensor([9.0, -9.0, -9.0]).reshape(1, 3, 1, 1).expand(2, 3, 5, 1)
    logits_ext = torch.cat([logits, wrong], dim=-1)
    weights = [0.2, 1.0, 3.0]
    base = SegmentationLoss(name, 3, weights)(logits, target)  # type: ignore[arg-type]
    ext = SegmentationLoss(name, 3, weights, ignore_index=255)(logits_ext, target_ext)  # type: ignore[arg-type]
    assert ext.item() == pytest.approx(base.item(), rel=1e-5)


def test_perfect_prediction_has_near_zero_loss():
    _, target = example()
    confident = onehot(target, 3) * 50.0
    for name in ("focal", "tversky", "dice_focal", "dice_tversky"):
        assert SegmentationLoss(name, 3)(confident, target).item() == pytest.approx(0.0, abs=1e-5)  # type: ignore[arg-type]


def test_unknown_loss_lists_every_name():
    with pytest.raises(ValueError, match=r"unknown loss 'lovasz'; choose one of dice, ce, .*dice_tversky"):
        SegmentationLoss("lovasz", 2)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["focal", "tversky", "dice_focal", "dice_tversky"])
def test_the_segmentation_task_selects_each_loss_by_name(name: str):
    task = SegmentationTask(model="unet", num_classes=3, model_kwargs={"depth": 1, "base_channels": 2}, loss=name)
    logits, target = example()
    assert task.criterion(logits, target).item() == SegmentationLoss(name, 3)(logits, target).item()  # type: ignore[arg-type]


def test_task_passes_loss_kwargs_and_refuses_unknown_ones():
    from segpipe.tasks import SegmentationTask

    task = SegmentationTask(loss="dice_tversky", loss_kwargs={"tversky_alpha": 0.2, "tversky_beta": 0.8})
    terms = [m for m in task.criterion.modules() if type(m).__name__ == "TverskyLoss"]
    assert [(t.alpha, t.beta) for t in terms] == [(0.2, 0.8)]
    with pytest.raises(ValueError, match=r"loss_kwargs: unknown option\(s\) \['gama'\]"):
        SegmentationTask(loss="focal", loss_kwargs={"gama": 1.0})
