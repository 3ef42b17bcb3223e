"""Optional behaviour of a run, as Lightning callbacks."""

from segpipe.callbacks.performance import PerformanceFlags, effective_batch_size, scaling_statement

__all__ = ["PerformanceFlags", "effective_batch_size", "scaling_statement"]
