"""segpipe's side, zero-config: ``segpipe plan --time-budget``, ``segpipe fit`` of the plan as written, ``segpipe
predict`` of the held-out ``imagesTs`` with the fit's best checkpoint (highest ``val/dice``).

``plan_s`` is the ``segpipe plan`` command: data checks, fingerprint, planning and the timed calibration steps
(outside the fit's budget, as nnU-Net's planning and preprocessing are outside its trainer's); ``train_s`` is
the ``segpipe fit --config plan.yaml`` command, which the plan fits into the budget: start-up, data checks,
preprocessing, training, validation and the plan's test after fit; ``predict_s`` is the ``segpipe predict``
command.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from segpipe.errors import SegpipeError
from vs_nnunet.datasets import SetSpec
from vs_nnunet.runs import run_stage


def best_checkpoint(folder: Path) -> Path:
    """The ``best-*.ckpt`` under ``folder`` (the fit's run folder), the newest when there are several.

    Raises:
        SegpipeError: when there is none.
    """
    found = sorted(folder.rglob("best-*.ckpt"), key=lambda path: path.stat().st_mtime)
    if not found:
        raise SegpipeError(f"{folder} holds no best-*.ckpt: did segpipe fit validate at least once?")
    return found[-1]


def run_segpipe(work: Path, spec: SetSpec, budget: str, predictions: Path) -> dict[str, float]:
    """Plan for ``budget``, fit and predict the held-out cases of ``spec`` into ``predictions``; returns
    each stage's wall time (``plan_s``, ``train_s``, ``predict_s``).

    Raises:
        SegpipeError: naming the stage's log when a segpipe command fails.
    """
    dataset = work / "nnUNet_raw" / spec.folder_name
    run_dir = work / "segpipe" / spec.name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    shutil.rmtree(predictions, ignore_errors=True)
    logs = work / "logs" / f"{spec.name}_segpipe"
    segpipe = [sys.executable, "-m", "segpipe.cli"]
    # MLFLOW_TRACKING_URI wins over the plan's store: the runs go to the work folder, not the repository's.
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    plan = run_dir / "plan.yaml"
    plan_command = [*segpipe, "plan", str(dataset), "--time-budget", budget, "--out", str(plan)]
    times = {"plan_s": run_stage(plan_command, logs / "plan.log", env)}
    fit = [*segpipe, "fit", "--config", str(plan), "--trainer.enable_progress_bar", "false"]
    times["train_s"] = run_stage(fit, logs / "fit.log", env, cwd=run_dir)
    predict = [*segpipe, "predict", "--config", str(plan), "--ckpt_path", str(best_checkpoint(run_dir))]
    predict += ["--predict_writer.output_dir", str(predictions), "--trainer.enable_progress_bar", "false"]
    times["predict_s"] = run_stage(predict, logs / "predict.log", env, cwd=run_dir)
    return times
