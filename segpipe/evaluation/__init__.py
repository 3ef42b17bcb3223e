"""Metrics computed over a whole split (not averaged per batch), so they are exact under DDP."""

from segpipe.evaluation.overlap import OverlapScores

__all__ = ["OverlapScores"]
