"""Helpers of ``benchmarks/vs_nnunet.py``: the datasets, the two tools' runs, the scoring table."""
