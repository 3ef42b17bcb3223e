"""Segmentation losses: Dice, cross-entropy, focal, Tversky and their sums with Dice, with class weights and
ignore_index."""

from segpipe.losses.segmentation import LossName, SegmentationLoss

__all__ = ["LossName", "SegmentationLoss"]
