"""Five folds of the 3D demo: each fold, the single best fold and the 5-fold ensemble on the held-out test
slabs, each with and without the post-processing chosen on validation.

    nice -n 10 uv run python benchmarks/folds3d.py [--workdir outputs/benchmark-folds3d] [--folds 5]
        [--epochs 50] [--config configs/unet3d.yaml] [--jobs 1] [--threads 1]

The 3D demo's ``split.yaml`` fixes train (6 slabs), val (2) and test (2). The test slabs stay held out; the
8 train + val slabs are cut into ``--folds`` folds (scikit-learn ``KFold``, shuffled, seed 0), written as one
split file per fold into ``--workdir`` (the demo DataModule reads its own split file and ignores ``fold``, so
the folds are given as split files to a plain ``VolumeDataModule`` over the same folder with the demo's
preprocessing). Each fold is a real ``segpipe fit`` (its MLflow run in ``<workdir>/mlflow.db``, experiment
``folds3d``), which chooses its post-processing on its val slabs. Scoring runs in this process on the test
slabs with validation's one-pass sliding window (no TTA), through :func:`segpipe.inference.ensemble.build_ensemble`
(a single fold is an ensemble of one): the mean over test slabs of the mean grey/white-matter Dice, before and
after each model's stored rule (for the ensemble: the rule chosen on all folds' validation evidence pooled).
The single best fold is the one with the highest validation Dice. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from _record import machine_description  # benchmarks/ is first on sys.path
from sklearn.model_selection import KFold

from segpipe.data import VolumeDataModule
from segpipe.data.demos.mni3d import INFO_FILE, SPLIT_FILE, build_mni_demo3d
from segpipe.inference.ensemble import build_ensemble
from segpipe.inference.ensemble_members import resolve_members
from segpipe.inference.postprocessing import apply_rule, case_dice, rule_of
from segpipe.io.checkpoints import safe_load
from segpipe.tracking.store import local_artifact_location

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "folds3d"


def fold_split_files(demo: Path, workdir: Path, folds: int) -> list[Path]:
    """One split file per fold: the demo's test slabs, and fold k of the train + val slabs as val."""
    split = yaml.safe_load((demo / SPLIT_FILE).read_text())
    pool = sorted(split["train"] + split["val"])
    files = []
    for k, (train, val) in enumerate(KFold(folds, shuffle=True, random_state=0).split(pool)):
        names = {"train": [pool[i] for i in train], "val": [pool[i] for i in val], "test": split["test"]}
        path = workdir / f"split_fold{k}.yaml"
        path.write_text(yaml.safe_dump(names))
        files.append(path)
    return files


def fold_config(base: Path, demo: Path, split_file: Path, workdir: Path, epochs: int) -> dict:
    """The experiment config with the demo's data settings on a plain VolumeDataModule and this fold's split."""
    data = yaml.safe_load((ROOT / "configs" / "data" / "mni3d.yaml").read_text())["data"]["init_args"]
    data |= {"root": str(demo), "layout": "images_labels", "split_file": str(split_file)}
    return {
        "config": str(base),
        "trainer.max_epochs": epochs,
        "trainer.default_root_dir": str(workdir / "outputs"),
        "trainer.enable_progress_bar": False,
        "trainer.logger": {
            "class_path": "segpipe.tracking.MLflowLogger",
            "init_args": {"experiment_name": EXPERIMENT, "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}"},
        },
        "data": {"class_path": "segpipe.data.VolumeDataModule", "init_args": data},
    }


def create_experiment(tracking_uri: str) -> None:
    """Create the store and the experiment before folds run side by side (two first writers of one SQLite
    store race to create its tables)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    if client.get_experiment_by_name(EXPERIMENT) is None:
        client.create_experiment(EXPERIMENT, artifact_location=local_artifact_location(tracking_uri, EXPERIMENT))


def train_folds(configs: list[Path], jobs: int, threads: int) -> float:
    """``segpipe fit`` of each fold config without a ``<config>.done`` marker (a fold trained by an earlier
    call is kept), ``jobs`` at a time with ``threads`` torch threads each (no test after fit: scoring is
    below; no MLflow model logging, which the scoring does not use); total seconds."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    start, running = time.perf_counter(), []
    todo = [config for config in configs if not config.with_suffix(".done").is_file()]
    for config in todo:
        command = ["segpipe", "fit", "--config", str(config), "--test_after_fit", "false"]
        process = subprocess.Popen([*command, "--model_logging.enabled", "false"], cwd=config.parent, env=env)
        running.append((config, process))
        if len(running) == jobs or config == todo[-1]:
            for done, process in running:
                if process.wait() != 0:
                    raise SystemExit(f"{process.args} failed with exit code {process.returncode}")
                done.with_suffix(".done").touch()
            print(f"segpipe: folds up to {config.name} trained at {time.perf_counter() - start:.0f} s", flush=True)
            running = []
    return time.perf_counter() - start


def test_cases(config: dict) -> list[dict]:
    """The held-out test slabs, preprocessed as in training: ``{"image": (1, 1, X, Y, Z), "mask": (X, Y, Z)}``."""
    dm = VolumeDataModule(**config["data"]["init_args"])
    dm.prepare_data()
    dm.setup("test")
    return [
        {"image": torch.as_tensor(item["image"])[None], "mask": np.asarray(item["mask"])}
        for item in dm.datasets["test"]
    ]


def score(paths: list[Path], cases: list[dict], classes: list[int]) -> tuple[float, float]:
    """Mean test Dice (over slabs, of the foreground classes' mean) before and after the stored rule."""
    task = build_ensemble(paths, {})
    rule = rule_of(task.postprocessing)
    before, after = [], []
    with torch.no_grad():
        for case in cases:
            labels = task.infer(case["image"]).argmax(1)[0].numpy()
            cleaned = apply_rule(labels, rule)
            before.append(np.mean([case_dice(labels, case["mask"], c) for c in classes]))
            after.append(np.mean([case_dice(cleaned, case["mask"], c) for c in classes]))
    return float(np.mean(before)), float(np.mean(after))


def rule_text(paths: list[Path]) -> str:
    rule = rule_of(build_ensemble(paths, {}).postprocessing)
    return ", ".join(f"{cls}: {option}" for cls, option in sorted(rule.items())) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "outputs" / "benchmark-folds3d")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "unet3d.yaml")
    parser.add_argument("--jobs", type=int, default=1, help="folds trained at the same time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per fold (OMP_NUM_THREADS)")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    demo = ROOT / "data" / "demo3d"
    if not (demo / INFO_FILE).is_file():
        build_mni_demo3d(demo)
    configs = [
        fold_config(args.config.resolve(), demo, split_file, workdir, args.epochs)
        for split_file in fold_split_files(demo, workdir, args.folds)
    ]
    files = [workdir / f"fold{k}.yaml" for k in range(args.folds)]
    for file, config in zip(files, configs, strict=True):
        file.write_text(yaml.safe_dump(config, sort_keys=False))
    create_experiment(f"sqlite:///{workdir / 'mlflow.db'}")
    seconds = train_folds(files, args.jobs, args.threads)

    members = resolve_members([f"mlflow:{EXPERIMENT}"], workdir / "outputs", f"sqlite:///{workdir / 'mlflow.db'}")
    cases = test_cases(configs[0])  # the same test slabs in every fold
    classes = [1, 2]  # grey and white matter
    val = [safe_load(path)["best_score"]["value"] for path in members]
    best = int(np.argmax(val))
    rows = [(f"fold {k}", [path], f"{val[k]:.4f}") for k, path in enumerate(members)]
    rows.append((f"single best fold (fold {best})", [members[best]], f"{val[best]:.4f}"))
    rows.append((f"{len(members)}-fold ensemble", members, ""))
    trained = f"{len(members)} folds of {args.epochs} epochs trained in {seconds:.0f} s"
    trained += f" ({args.jobs} at a time, {args.threads} torch thread(s) each)"
    print(f"\n{machine_description()}; {trained}; test slabs: {len(cases)}\n")
    print("| model | val Dice | test Dice | test Dice, post-processed | rule (class: option) |")
    print("| --- | --- | --- | --- | --- |")
    for name, paths, val_text in rows:
        before, after = score(paths, cases, classes)
        print(f"| {name} | {val_text} | {before:.4f} | {after:.4f} | {rule_text(paths)} |")


if __name__ == "__main__":
    sys.exit(main())
