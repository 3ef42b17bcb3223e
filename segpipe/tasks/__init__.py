"""LightningModules: the research code, free of file I/O, on one base task."""

from segpipe.tasks.base import BaseTask
from segpipe.tasks.segmentation import SegmentationTask

__all__ = ["BaseTask", "SegmentationTask"]
