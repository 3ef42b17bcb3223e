"""``segpipe test`` report: gathers the per-case rows of every process and logs them to the run.

Scoring, the summary, the CSVs and the table are :mod:`segpipe.evaluation`'s; this callback collects
the rows during ``test``, gathers them across processes and hands the report to MLflow: the CSVs, the
per-case table, box plots and a short summary at the artifact root (MLflow's compare view shows only
root files side by side), and the per-case means as metrics, linked to the logged model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from segpipe.evaluation.case_metrics import Rows, batch_case_metrics, case_columns
from segpipe.evaluation.report import CaseReport, print_summary, write_report
from segpipe.io.checkpoints import safe_load
from segpipe.tracking.logger import MLflowLogger, mlflow_logger, run_folder
from segpipe.tracking.model import LogBestModel, link_metrics

BOX_PLOTS = "test_boxplots.png"
CASES_TABLE = "test_cases.json"
SUMMARY = "summary.json"


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


def mean_metrics(summary: Rows, class_names: list[str]) -> dict[str, float]:
    """The per-case means as metrics: ``test/<metric>_mean_<class>``, ``..._c<k>`` and ``..._fg_mean``.

    ``<metric>`` is a summary metric (``dice``, ``iou``, ``hd95_mm``, ``asd_px``, ...), ``k`` the class's
    index in ``class_names`` and ``fg_mean`` the mean over the foreground classes that have a mean. Classes
    without a scored case (all NaN) are left out.
    """
    metrics: dict[str, float] = {}
    by_metric: dict[str, list[float]] = {}
    for s in summary:
        if not s["n"]:
            continue
        name, mean = str(s["class"]), float(s["mean"])
        metrics[f"test/{s['metric']}_mean_{name}"] = mean
        metrics[f"test/{s['metric']}_mean_c{class_names.index(name)}"] = mean
        by_metric.setdefault(str(s["metric"]), []).append(mean)
    for metric, means in by_metric.items():
        metrics[f"test/{metric}_mean_fg_mean"] = sum(means) / len(means)
    return metrics


def best_validation(checkpoint: str) -> dict[str, Any]:
    """What a checkpoint says of the best validation score: its monitor, the score, the best checkpoint's
    file and epoch (read from that file when it is another one), and the tested checkpoint's epoch."""
    state = safe_load(checkpoint)
    tracker = next(
        (
            s
            for s in state.get("callbacks", {}).values()
            if isinstance(s, dict) and s.get("best_model_score") is not None
        ),
        None,
    )
    found: dict[str, Any] = {"tested_epoch": state.get("epoch")}
    if tracker is None:
        return found
    best = Path(str(tracker["best_model_path"]))
    same = best.name == Path(checkpoint).name
    found.update(
        monitor=tracker.get("monitor"),
        best_score=float(tracker["best_model_score"]),
        best_checkpoint=best.name,
        best_epoch=state.get("epoch") if same else (safe_load(best).get("epoch") if best.is_file() else None),
    )
    return found


def run_summary(report: CaseReport, metrics: Mapping[str, Any], checkpoint: str | None) -> dict[str, Any]:
    """The run at a glance (``summary.json``): the tested checkpoint and the best validation score
    (:func:`best_validation`), the test Dice pooled over the split's pixels (the task's ``test/dice*``
    metrics in ``metrics``) and averaged over the cases per class, and the distances' unit."""
    summary: dict[str, Any] = {"tested_checkpoint": Path(checkpoint).name if checkpoint else None}
    if checkpoint and Path(checkpoint).is_file():
        summary.update(best_validation(checkpoint))
    summary["test_dice_pooled"] = {k: float(v) for k, v in sorted(metrics.items()) if k.startswith("test/dice")}
    summary["test_dice_mean_per_case"] = {
        str(s["class"]): float(s["mean"]) if s["n"] else None for s in report.summary if s["metric"] == "dice"
    }
    summary["distance_unit"] = report.unit
    return summary


class TestReport(Callback):
    """Score every test case separately and report it (see :mod:`segpipe.evaluation.case_metrics` for the rules).

    Writes ``test_cases.csv`` (case, class, dice, iou, hd95_<unit>, asd_<unit>, volume_pred, volume_ref;
    unit ``mm`` when the data carry a spacing, else ``px``/``vox``) and ``test_summary.csv`` (mean, median,
    std and number of scored cases per class and metric) to ``output_dir`` and to the run under
    ``reports/``; prints the summary as a table. Logs at the artifact root ``test_boxplots.png`` (also
    as ``figures/test_boxplots.png``), ``summary.json`` (:func:`~segpipe.tracking.summary.run_summary`) and
    the table ``test_cases.json`` (``mlflow.log_table``, with the tested checkpoint's name; a repeated
    test of the run appends its rows), and the per-case means as metrics (:func:`mean_metrics`), linked
    to the model logged by :class:`~segpipe.tracking.model.LogBestModel`. Under DDP every process scores
    its share of the test cases and rank 0 reports all of them (:func:`gather_cases`).

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

    # on_test_end, not on_test_epoch_end: the task's split-level test metrics, which the summary quotes, are
    # computed in its own epoch-end hook, after the callbacks'.
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled:
            return
        self.cases = gather_cases(self.cases)  # on every rank: all_gather_object is collective
        if self.rows:
            self.report(trainer, list(pl_module.class_names))

    def folder(self, trainer: pl.Trainer) -> Path:
        return Path(self.output_dir) if self.output_dir is not None else run_folder(trainer) / "test_report"

    @rank_zero_only
    def report(self, trainer: pl.Trainer, class_names: list[str]) -> None:
        report = write_report(self.folder(trainer), self.rows)
        if self.print_table:
            print_summary(report.summary)
            print(f"Per-case test metrics: {report.cases_csv}")
        logger = mlflow_logger(trainer)
        if logger is None:
            return
        logger.log_artifact(report.cases_csv, "reports")
        logger.log_artifact(report.summary_csv, "reports")
        log_box_plots(logger, report)
        checkpoint = trainer.ckpt_path or getattr(trainer.checkpoint_callback, "best_model_path", "") or None
        log_cases_table(logger, report, Path(checkpoint).name if checkpoint else "")
        summary = run_summary(report, trainer.callback_metrics, checkpoint)
        logger.log_text(json.dumps(summary, indent=2), SUMMARY)
        model_id = next((cb.model_id for cb in trainer.callbacks if isinstance(cb, LogBestModel)), None)
        link_metrics(logger, mean_metrics(report.summary, class_names), trainer.global_step, model_id)


def log_cases_table(logger: MLflowLogger, report: CaseReport, checkpoint: str) -> None:
    """Log the per-case rows as the table ``test_cases.json``, NaN as null, with the tested checkpoint."""
    table: dict[str, list[Any]] = {c: [row.get(c) for row in report.rows] for c in case_columns(report.unit)}
    table["checkpoint"] = [checkpoint] * len(report.rows)
    logger.guard(CASES_TABLE, lambda: logger.experiment.log_table(logger.run_id, table, CASES_TABLE))


def log_box_plots(logger: MLflowLogger, report: CaseReport) -> None:
    """Log ``test_boxplots.png`` (root) and ``figures/test_boxplots.png``: Dice and HD95 per class."""
    import matplotlib.pyplot as plt  # imported here: matplotlib is only needed when a report is logged

    from segpipe.tracking.figures import box_plot_figure

    figure = box_plot_figure(report.rows, ("dice", f"hd95_{report.unit}"))
    logger.log_figure(figure, BOX_PLOTS)
    logger.log_figure(figure, f"figures/{BOX_PLOTS}")
    plt.close(figure)
