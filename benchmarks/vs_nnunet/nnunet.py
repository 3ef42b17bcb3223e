"""nnU-Net v2's side: its own environment, its planner, a budget-limited trainer, prediction of held-out cases.

nnU-Net is installed from PyPI into ``<work>/nnunet-env`` (never into segpipe's environment) with segpipe's
torch version, so uv reuses the wheel it already holds. Its folders (``nnUNet_raw``, ``nnUNet_preprocessed``,
``nnUNet_results``) are under the work folder. Everything runs on the CPU (``-device cpu``), fold 0 (nnU-Net's
5-fold split of the training cases: 80 % trained, 20 % validated), and prediction uses
``checkpoint_final.pth`` (the weights at the end of the budget; nnU-Net's default).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path

from vs_nnunet.datasets import SetSpec
from vs_nnunet.runs import run_stage

NNUNET_VERSION = "2.8.1"
TRAINER = "nnUNetTrainerBudget"
TRAINER_FILE = Path(__file__).with_name(f"{TRAINER}.py")
BUDGET_ENV = "VS_NNUNET_BUDGET_S"
FOLD = "0"
CHECKPOINT = "checkpoint_final.pth"


def torch_version() -> str:
    """segpipe's torch version without its local build tag (``2.15.0+cu132`` -> ``2.15.0``)."""
    return version("torch").split("+")[0]


def ensure_environment(work: Path) -> Path:
    """The ``bin`` folder of nnU-Net's environment, created with uv on first use, with the budget trainer
    copied into the installed package.

    Raises:
        SegpipeError: naming the log of the uv command that failed.
    """
    env = work / "nnunet-env"
    python = env / "bin" / "python"
    logs = work / "logs"
    if not python.exists():
        run_stage(["uv", "venv", "--python", "3.11", str(env)], logs / "nnunet-env-venv.log")
    packages = [f"nnunetv2=={NNUNET_VERSION}", f"torch=={torch_version()}"]
    run_stage(["uv", "pip", "install", "--python", str(python), *packages], logs / "nnunet-env-install.log")
    package = subprocess.run(
        [str(python), "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    shutil.copy(TRAINER_FILE, Path(package) / "training" / "nnUNetTrainer" / "variants" / TRAINER_FILE.name)
    return env / "bin"


def nnunet_env(work: Path, budget_s: float) -> dict[str, str]:
    """This process's environment plus nnU-Net's three folders and the trainer's budget."""
    return {
        **os.environ,
        "nnUNet_raw": str(work / "nnUNet_raw"),
        "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
        "nnUNet_results": str(work / "nnUNet_results"),
        BUDGET_ENV: str(budget_s),
    }


def run_nnunet(work: Path, spec: SetSpec, budget_s: float, predictions: Path) -> dict[str, float]:
    """Plan and preprocess, train within ``budget_s`` and predict ``imagesTs`` into ``predictions``;
    returns each stage's wall time (``plan_s``, ``train_s``, ``predict_s``).

    Raises:
        SegpipeError: naming the stage's log when an nnU-Net command fails.
    """
    bin_dir = ensure_environment(work)
    env = nnunet_env(work, budget_s)
    logs = work / "logs" / f"{spec.name}_nnunet"
    dataset, configuration = str(spec.dataset_id), spec.nnunet_configuration
    results = work / "nnUNet_results" / spec.folder_name
    shutil.rmtree(results, ignore_errors=True)
    shutil.rmtree(work / "nnUNet_preprocessed" / spec.folder_name, ignore_errors=True)
    shutil.rmtree(predictions, ignore_errors=True)
    plan = [str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", dataset, "-c", configuration]
    times = {"plan_s": run_stage([*plan, "--verify_dataset_integrity"], logs / "plan.log", env)}
    train = [str(bin_dir / "nnUNetv2_train"), dataset, configuration, FOLD, "-tr", TRAINER, "-device", "cpu"]
    times["train_s"] = run_stage(train, logs / "train.log", env)
    images = work / "nnUNet_raw" / spec.folder_name / "imagesTs"
    predict = [str(bin_dir / "nnUNetv2_predict"), "-i", str(images), "-o", str(predictions), "-d", dataset]
    predict += ["-c", configuration, "-f", FOLD, "-tr", TRAINER, "-chk", CHECKPOINT, "-device", "cpu"]
    times["predict_s"] = run_stage(predict, logs / "predict.log", env)
    return times
