"""`segpipe classify`: folder data, the slab demo, and an end-to-end run whose checkpoint seeds a U-Net."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from builders import write_classes

from segpipe.cli import main
from segpipe.data.demos.mni2d import slab_splits
from segpipe.data.demos.mni_classification import slab_classes
from segpipe.data.modules.classification import ClassificationFolderDataModule
from segpipe.data.sources.pairing import Case
from segpipe.data.splits import stratified_split
from segpipe.io.images import read_image
from segpipe.models import build_model


def test_stratified_split_keeps_every_class_in_every_split():
    items = [(Case(f"{c}{i}", Path(f"{c}{i}.png")), c) for c in range(3) for i in range(10)]
    splits = stratified_split(items, 0.2, 0.1, seed=0)
    assert {s: Counter(label for _, label in v) for s, v in splits.items()} == {
        "train": {0: 7, 1: 7, 2: 7},
        "val": {0: 2, 1: 2, 2: 2},
        "test": {0: 1, 1: 1, 2: 1},
    }
    assert splits == stratified_split(items, 0.2, 0.1, seed=0)
    with pytest.raises(ValueError, match=r"val_fraction \(0\.6\) and test_fraction \(0\.5\)"):
        stratified_split(items, 0.6, 0.5, seed=0)


def test_folder_datamodule_labels_by_sorted_class_name(tmp_path: Path):
    root = write_classes(tmp_path / "data")
    data = ClassificationFolderDataModule(root=str(root), val_fraction=0.5, num_workers=0, batch_size=2)
    assert data.class_names() == ["bright", "dark"]
    data.setup("fit")
    sample = data.datasets["val"][0]
    assert sample["image"].shape == (1, 33, 37) and sample["image"].dtype == torch.float32
    name = sample["name"].split("/")[0]
    assert int(sample["label"]) == data.class_names().index(name)
    assert len(data.datasets["train"]) == 6 and len(data.datasets["val"]) == 6


def test_slab_demo_uses_only_training_slabs_of_the_segmentation_demo():
    brain = list(range(10, 110))
    labels = slab_classes(brain)
    splits = slab_splits(brain)
    assert set(labels) == set(splits["train"])
    assert sorted(set(labels.values())) == [f"slab{k}" for k in range(6)]
    assert labels[10] == "slab0" and labels[max(labels)] == "slab5"
    assert not set(labels) & set(splits["val"] + splits["test"])


def test_classify_fit_logs_to_mlflow_and_its_checkpoint_seeds_a_unet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = write_classes(tmp_path / "data", per_class=4, size=(32, 32))
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "logger": {
                "class_path": "segpipe.tracking.MLflowLogger",
                "init_args": {"experiment_name": "classify-tests", "tracking_uri": "sqlite:///mlflow.db"},
            },
        },
        "model": {"encoder": "resnet18", "in_channels": 1, "num_classes": 2},
        "data": {
            "class_path": "segpipe.data.modules.classification.ClassificationFolderDataModule",
            "init_args": {"root": str(root), "val_fraction": 0.5, "batch_size": 4, "num_workers": 0},
        },
    }
    path = tmp_path / "classify.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["classify", "fit", "--config", str(path)]) == 0

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["classify-tests"], output_format="list")
    assert 0.0 <= run.data.metrics["val/acc"] <= 1.0 and "train/loss" in run.data.metrics
    assert run.data.params["network"] == "resnet18"

    best = next(Path("outputs").rglob("best-*.ckpt"))
    state = torch.load(best, weights_only=True)["state_dict"]
    net = build_model("encoder_unet", 2, 1, 3, encoder="resnet18", encoder_weights=str(best))
    for key, value in net.encoder.state_dict().items():
        assert torch.equal(value, state[f"net.encoder.{key}"]), key

    # A class count that disagrees with the folders is one line and exit code 2.
    assert main(["classify", "validate", "--config", str(path), "--model.num_classes", "3"]) == 2


CONFIG_DIR = Path(__file__).parents[2] / "configs"


def test_classify_demo_config_resolves(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        main(["classify", "fit", "--config", str(CONFIG_DIR / "classify_demo.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["num_classes"] == len(resolved["model"]["class_names"]) == 6
    assert resolved["checkpoint"]["monitor"] == "val/acc"
    assert resolved["checkpoint"]["dirpath"] == "outputs/classify_demo"


def test_pretrained_unet_config_builds_with_a_classify_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from segpipe.tasks import SegmentationTask
    from segpipe.tasks.classification import ClassificationTask

    resolved_args = ["fit", "--config", str(CONFIG_DIR / "pretrained_unet.yaml"), "--print_config"]
    with pytest.raises(SystemExit):
        main(resolved_args)
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["model_kwargs"]["encoder_weights"] == "outputs/classify_demo/best.ckpt"
    classifier = ClassificationTask(encoder="resnet18", in_channels=1, num_classes=6)
    ckpt = tmp_path / "best.ckpt"
    torch.save({"state_dict": classifier.state_dict()}, ckpt)
    model_config = {k: v for k, v in resolved["model"].items() if k not in ("optimizer", "lr_scheduler")}
    model_config["model_kwargs"]["encoder_weights"] = str(ckpt)
    task = SegmentationTask(**model_config)
    assert torch.equal(task.net.encoder.layer3[0].conv1.weight, classifier.net.encoder.layer3[0].conv1.weight)


def test_classification_dataset_normalization_uses_the_training_images(tmp_path: Path):
    root = write_classes(tmp_path / "classes", per_class=5)
    dm = ClassificationFolderDataModule(root=str(root), val_fraction=0.4, normalization="dataset", num_workers=0)
    train = [case for case, _ in dm.splits()["train"]]
    pixels = np.concatenate([read_image(case.image).astype(np.float64).ravel() for case in train])
    np.testing.assert_allclose(dm.statistics()["mean"], [pixels.mean()], rtol=1e-12)
    np.testing.assert_allclose(dm.statistics()["std"], [pixels.std()], rtol=1e-12)
    assert dm.plan().mean == dm.statistics()["mean"] == dm.hparams["mean"]
