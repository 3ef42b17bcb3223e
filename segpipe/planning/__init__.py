"""Self-configuration: a dataset fingerprint and the experiment plan decided from it (``segpipe plan``)."""

from segpipe.planning.fingerprint import DatasetFingerprint, dataset_fingerprint
from segpipe.planning.planner import ExperimentPlan, plan_experiment

__all__ = ["DatasetFingerprint", "ExperimentPlan", "dataset_fingerprint", "plan_experiment"]
