"""LightningModules: the research code, free of file I/O."""

from segpipe.tasks.segmentation import SegmentationTask

__all__ = ["SegmentationTask"]
