"""Inference: writing predictions."""

from segpipe.inference.writer import MaskWriter

__all__ = ["MaskWriter"]
