"""Segmentation losses: Dice, cross-entropy and their weighted sum, with class weights and ignore_index."""

from segpipe.losses.segmentation import LossName, SegmentationLoss

__all__ = ["LossName", "SegmentationLoss"]
