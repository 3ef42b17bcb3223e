"""``segpipe test`` report: gathers the per-case rows of every process and logs them to the run.

Scoring, the summary, the CSVs and the table are :mod:`segpipe.evaluation`'s; this callback collects
the rows during ``test``, gathers them across processes and hands the report to MLflow (CSV artifacts,
box plots, per-class means of HD95 and ASD).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from segpipe.evaluation.case_metrics import Rows, batch_case_metrics
from segpipe.evaluation.report import print_summary, write_report
from segpipe.tracking.logger import MLflowLogger, mlflow_logger, run_folder


def gather_cases(cases: list[Rows]) -> list[Rows]:
    """Every process's per-case rows, each case once, in the order one process would have scored them.

    ``cases`` holds this process's cases (the rows of one case per entry). Under DDP, rank ``r`` of ``W``
    scores cases ``r, r + W, ...`` (:class:`~segpipe.distributed.UnrepeatedDistributedSampler`, and
    Lightning's ``DistributedSampler`` without shuffling), so taking the ranks' cases in turn restores the
    dataset's order. A case that a padding sampler scored twice is kept once. Without an initialised
    process group the input is returned as it is.

    Lightning's strategies gather tensors only; per-case rows are strings and floats, hence
    ``torch.distributed.all_gather_object``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return cases
    per_rank: list[list[Rows] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, cases)
    ordered: list[Rows] = []
    seen: set[str] = set()
    longest = max(len(rank_cases or []) for rank_cases in per_rank)
    for k in range(longest):
        for rank_cases in per_rank:
            if rank_cases is not None and k < len(rank_cases) and rank_cases[k]:
                name = str(rank_cases[k][0]["case"])
                if name not in seen:
                    seen.add(name)
                    ordered.append(rank_cases[k])
    return ordered


class TestReport(Callback):
    """Score every test case separately and report it (see :mod:`segpipe.evaluation.case_metrics` for the rules).

    Writes ``test_cases.csv`` (case, class, dice, iou, hd95, asd, volume_pred, volume_ref) and
    ``test_summary.csv`` (mean, median, std and number of scored cases per class and metric) to
    ``output_dir`` and to the run under ``reports/``; prints the summary as a table; logs
    ``figures/test_boxplots.png`` and the per-class means of HD95 and ASD as ``test/hd95_<class>`` and
    ``test/asd_<class>``. Under DDP every process scores its share of the test cases and rank 0 reports
    all of them (:func:`gather_cases`).

    Args:
        enabled: produce the report.
        output_dir: local folder for the CSVs (default: next to the checkpoints, ``.../test_report``).
        print_table: print the summary table to the console.
    """

    def __init__(self, enabled: bool = True, output_dir: str | None = None, print_table: bool = True) -> None:
        self.enabled = enabled
        self.output_dir = output_dir
        self.print_table = print_table
        self.cases: list[Rows] = []

    @property
    def rows(self) -> Rows:
        """The per-case rows, one per case and foreground class."""
        return [row for case in self.cases for row in case]

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.cases = []

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.enabled or not isinstance(outputs, dict) or "prediction" not in outputs:
            return
        ignore = pl_module.hparams.get("ignore_index")
        self.cases.extend(batch_case_metrics(outputs["prediction"], batch, pl_module.class_names, ignore))

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled:
            return
        self.cases = gather_cases(self.cases)  # on every rank: all_gather_object is collective
        if self.rows:
            self.report(trainer)

    def folder(self, trainer: pl.Trainer) -> Path:
        return Path(self.output_dir) if self.output_dir is not None else run_folder(trainer) / "test_report"

    @rank_zero_only
    def report(self, trainer: pl.Trainer) -> None:
        report = write_report(self.folder(trainer), self.rows)
        if self.print_table:
            print_summary(report.summary)
            print(f"Per-case test metrics: {report.cases_csv}")
        logger = mlflow_logger(trainer)
        if logger is None:
            return
        logger.log_artifact(report.cases_csv, "reports")
        logger.log_artifact(report.summary_csv, "reports")
        log_box_plots(logger, report.rows)
        means = {
            f"test/{s['metric']}_{s['class']}": float(s["mean"])
            for s in report.summary
            if s["metric"] in ("hd95", "asd") and s["n"]
        }
        logger.log_metrics(means, step=trainer.global_step)


def log_box_plots(logger: MLflowLogger, rows: Rows) -> None:
    """Log ``figures/test_boxplots.png``: Dice and HD95 per class over the test cases."""
    import matplotlib.pyplot as plt  # imported here: matplotlib is only needed when a report is logged

    from segpipe.tracking.figures import box_plot_figure

    figure = box_plot_figure(rows)
    logger.log_figure(figure, "figures/test_boxplots.png")
    plt.close(figure)
