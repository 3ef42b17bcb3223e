"""Inference: whole inputs through a network (sliding_window, tta) and writing predictions."""

from segpipe.inference.writer import MaskWriter

__all__ = ["MaskWriter"]
