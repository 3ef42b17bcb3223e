"""Connected-component post-processing and nnU-Net's choice on validation Dice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segpipe.inference.postprocessing import (
    LARGEST,
    NONE,
    RuleEvidence,
    apply_rule,
    apply_rule_to_batch,
    case_dice,
    choose_rule,
    clean_class,
    decision,
    option_names,
    pool_evidence,
    rule_of,
)


def two_blobs() -> np.ndarray:
    """(9, 11) labels: class 1 as a 3x3 block (9 voxels) and a 2-voxel speck; class 2 as a 2x2 block."""
    labels = np.zeros((9, 11), np.int64)
    labels[1:4, 1:4] = 1
    labels[7, 8:10] = 1
    labels[6:8, 1:3] = 2
    return labels


def test_largest_component_keeps_the_biggest_blob_and_leaves_other_classes():
    cleaned = clean_class(two_blobs(), 1, LARGEST)
    assert (cleaned == 1).sum() == 9 and (cleaned[7, 8:10] == 0).all()
    assert ((cleaned == 2) == (two_blobs() == 2)).all()


def test_min_size_removes_only_smaller_components():
    assert (clean_class(two_blobs(), 1, "min_size_3") == 1).sum() == 9
    assert (clean_class(two_blobs(), 1, "min_size_2") == 1).sum() == 11  # the 2-voxel speck stays
    assert (clean_class(two_blobs(), 1, "min_size_10") == 1).sum() == 0


def test_unknown_option_is_refused():
    with pytest.raises(ValueError, match="min_size_<N>"):
        clean_class(two_blobs(), 1, "biggest")
    with pytest.raises(ValueError, match="unknown post-processing option"):
        rule_of({"rule": {"1": "min_size_x"}})


def test_tensor_in_tensor_out_and_batch_items_stay_apart():
    labels = torch.as_tensor(two_blobs(), dtype=torch.int64)
    cleaned = apply_rule(labels, {1: LARGEST})
    assert isinstance(cleaned, torch.Tensor) and cleaned.dtype == torch.int64
    assert int((cleaned == 1).sum()) == 9
    # Item 0 holds a 9-voxel block, item 1 a lone 2-voxel speck: each is its item's largest component.
    batch = torch.zeros(2, 9, 11, dtype=torch.int64)
    batch[0, 1:4, 1:4] = 1
    batch[1, 7, 8:10] = 1
    assert torch.equal(apply_rule_to_batch(batch, {1: LARGEST}), batch)


def test_case_dice_matches_the_definition_and_ignores_ignored_voxels():
    prediction, target = np.array([1, 1, 0, 0, 2]), np.array([1, 0, 0, 1, 255])
    assert case_dice(prediction, target, 1) == pytest.approx(2 * 1 / (2 + 2))
    assert case_dice(prediction, target, 2, ignore_index=255) == 1.0  # only in an ignored voxel: both empty
    assert case_dice(np.zeros(3), np.zeros(3), 1) == 1.0


def evidence_from_cases() -> RuleEvidence:
    """Class 1: the truth is one blob and the prediction adds a speck (largest component helps).
    Class 2: the truth has two blobs and the prediction both (largest component would hurt)."""
    truth = two_blobs()
    truth[7, 8:10] = 0
    truth[1:3, 8:10] = 2
    prediction = two_blobs()
    prediction[1:3, 8:10] = 2
    evidence = RuleEvidence()
    for _ in range(2):
        evidence.add_case(prediction, truth, [1, 2], option_names([3]))
    return evidence


def test_a_rule_is_kept_only_where_it_raises_the_class_dice():
    evidence = evidence_from_cases()
    assert evidence.mean(1, NONE) == pytest.approx(2 * 9 / (11 + 9))
    assert evidence.mean(1, LARGEST) == 1.0
    assert evidence.mean(2, LARGEST) < evidence.mean(2, NONE) == 1.0
    rule = choose_rule(evidence)
    assert rule in ({1: LARGEST}, {1: "min_size_3"})  # both reach 1.0 for class 1
    stored = decision(evidence)
    assert stored["val_dice_before"] == pytest.approx((18 / 20 + 1.0) / 2)
    assert stored["val_dice_after"] == pytest.approx(1.0)
    assert rule_of(stored) == rule


def test_pooled_evidence_adds_the_folds_cases():
    a, b = evidence_from_cases(), RuleEvidence()
    b.add_case(np.zeros((9, 11), np.int64), two_blobs(), [1, 2], option_names([3]))  # a fold that finds nothing
    pooled = pool_evidence([a, RuleEvidence.from_dict(b.to_dict())])
    assert pooled.totals[1][NONE][1] == 3
    assert pooled.mean(1, NONE) == pytest.approx((2 * 18 / 20 + 0.0) / 3)
    other = RuleEvidence()
    other.add_case(two_blobs(), two_blobs(), [1, 2], option_names([5]))
    with pytest.raises(ValueError, match="different classes/options"):
        pool_evidence([a, other])
