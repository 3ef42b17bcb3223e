"""Optional behaviour of a run, as Lightning callbacks."""

from segpipe.callbacks.checkpoint import ResumableCheckpoint
from segpipe.callbacks.nonfinite import NonFiniteGuard
from segpipe.callbacks.performance import PerformanceFlags, effective_batch_size, scaling_statement
from segpipe.callbacks.postprocessing import PostprocessingSelection
from segpipe.callbacks.random_state import RandomStateInCheckpoint
from segpipe.callbacks.time_budget import TimeBudget

__all__ = [
    "NonFiniteGuard",
    "PerformanceFlags",
    "PostprocessingSelection",
    "RandomStateInCheckpoint",
    "ResumableCheckpoint",
    "TimeBudget",
    "effective_batch_size",
    "scaling_statement",
]
