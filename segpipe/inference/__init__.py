"""Inference: whole inputs through a network (sliding_window, tta) and writing predictions.

``MaskWriter`` (a Lightning callback) loads on first use (PEP 562), so that the ONNX predict path, which
imports this package's runtime modules, runs without Lightning.
"""

from typing import Any

__all__ = ["MaskWriter"]


def __getattr__(name: str) -> Any:
    if name != "MaskWriter":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from segpipe.inference.writer import MaskWriter

    return MaskWriter
