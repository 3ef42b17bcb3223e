"""Optional behaviour of a run, as Lightning callbacks."""

from segpipe.callbacks.checkpoint import ResumableCheckpoint
from segpipe.callbacks.nonfinite import NonFiniteGuard
from segpipe.callbacks.performance import PerformanceFlags, effective_batch_size, scaling_statement
from segpipe.callbacks.postprocessing import PostprocessingSelection
from segpipe.callbacks.random_state import RandomStateInCheckpoint

__all__ = [
    "NonFiniteGuard",
    "PerformanceFlags",
    "PostprocessingSelection",
    "RandomStateInCheckpoint",
    "ResumableCheckpoint",
    "effective_batch_size",
    "scaling_statement",
]
