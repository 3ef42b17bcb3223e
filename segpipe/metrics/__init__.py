"""Metrics computed over a whole split (not averaged per batch), so they are exact under DDP."""

from segpipe.metrics.overlap import OverlapScores

__all__ = ["OverlapScores"]
