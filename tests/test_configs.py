"""Every YAML in configs/ resolves through the real parsers: shared pieces compose, model and data build."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import LightningDataModule

from segpipe.cli.classify import ClassifyCLI
from segpipe.cli.fit import SegpipeCLI
from segpipe.data.modules.classification import ClassificationFolderDataModule
from segpipe.tasks import SegmentationTask
from segpipe.tasks.classification import ClassificationTask

CONFIGS = Path(__file__).parents[1] / "configs"
EXPERIMENTS = sorted(CONFIGS.glob("*.yaml"))
PIECES = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent != CONFIGS)
# The demo data is built from the nilearn package at fit time; building the DataModule reads nothing.
NOT_BUILT = {"pretrained_unet": ["--model.model_kwargs.encoder_weights", "none"]}  # needs the classify checkpoint


@functools.cache  # one parse per config and overrides: the tests read the result, never change it
def resolve(config: Path, *overrides: str) -> SegpipeCLI | ClassifyCLI:
    """The CLI of ``segpipe [classify] fit --config config``, with model, data and trainer built, not run."""
    args = ["--config", str(config), *overrides]
    with warnings.catch_warnings():  # args are given on purpose, while sys.argv holds pytest's
        warnings.filterwarnings("ignore", "LightningCLI's args parameter is intended")
        if config.stem.startswith("classify"):
            return ClassifyCLI(
                ClassificationTask, ClassificationFolderDataModule, subclass_mode_data=True,
                save_config_callback=None, auto_configure_optimizers=False, run=False, args=args,
            )  # fmt: skip
        return SegpipeCLI(
            SegmentationTask, LightningDataModule, subclass_mode_data=True,
            save_config_callback=None, auto_configure_optimizers=False, run=False, args=args,
        )  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(tmp_path_factory.mktemp("configs"))  # an instantiated trainer's MLflow store lands here
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


@pytest.mark.parametrize("config", EXPERIMENTS, ids=[c.stem for c in EXPERIMENTS])
def test_every_experiment_resolves_and_builds(config: Path):
    cli = resolve(config, *NOT_BUILT.get(config.stem, []))
    assert cli.config.seed_everything == 0
    assert cli.trainer.max_epochs == cli.config.trainer.max_epochs > 0
    assert cli.config.trainer.logger.class_path == "segpipe.tracking.MLflowLogger"
    assert cli.trainer.logger.tracking_uri.startswith("sqlite:///")
    assert isinstance(cli.datamodule, LightningDataModule)
    assert cli.model.hparams.num_classes == len(cli.model.hparams.class_names)
    if not config.stem.startswith("classify"):  # the cosine schedule takes the run's length
        assert cli.config.model.lr_scheduler.class_path == "segpipe.tasks.schedules.CosineToEnd"


def test_the_demo_resolves_to_its_documented_values():
    cli = resolve(CONFIGS / "demo.yaml")
    config = cli.config
    assert (config.trainer.max_epochs, config.trainer.precision, config.trainer.log_every_n_steps) == (30, "32-true", 5)
    assert config.trainer.logger.init_args.experiment_name == "segpipe-demo"
    assert config.model.model == "unet" and config.model.spatial_dims == 2 and config.model.loss == "dice_ce"
    assert config.model.model_kwargs == {
        "depth": 4, "base_channels": 16, "norm": "batch", "upsample": "transpose", "padded": True,
    }  # fmt: skip
    assert config.model.optimizer.class_path == "torch.optim.AdamW"
    assert config.model.optimizer.init_args.lr == 0.003 and config.model.optimizer.init_args.weight_decay == 0.0001
    assert config.data.class_path == "segpipe.data.MNIDemoDataModule"
    assert config.data.init_args.normalization == "dataset" and config.data.init_args.mean is None
    assert config.data.init_args.batch_size == 4 and config.data.init_args.root == "data/demo"


def test_unet_is_the_demo():
    demo, unet = resolve(CONFIGS / "demo.yaml").config.clone(), resolve(CONFIGS / "unet.yaml").config.clone()
    assert demo.pop("config") != unet.pop("config")  # the files named differ ...
    assert demo == unet  # ... the values do not


def test_the_3d_windows_are_the_training_patch():
    for name in ("unet3d", "dense_unet3d", "fcn8s3d", "segnet3d"):
        config = resolve(CONFIGS / f"{name}.yaml").config
        assert config.model.spatial_dims == 3 and config.trainer.max_epochs == 50
        assert list(config.model.inference_roi) == list(config.data.init_args.patch_size) == [32, 32, 16]
        assert config.trainer.logger.init_args.experiment_name == "segpipe-demo3d"
    assert resolve(CONFIGS / "unet3d.yaml").config.model.tta is True


def test_overrides_in_an_experiment_win_over_its_shared_pieces():
    transfer = resolve(CONFIGS / "pretrained_unet.yaml", *NOT_BUILT["pretrained_unet"]).config
    assert transfer.trainer.max_epochs == 10
    assert transfer.model.optimizer.init_args.lr == 0.001
    assert transfer.trainer.logger.init_args.experiment_name == "segpipe-transfer"
    assert transfer.data.class_path == "segpipe.data.MNIDemoDataModule"  # from configs/data/mni2d.yaml
    slices = resolve(CONFIGS / "unet2d_slices.yaml").config
    assert slices.model.slice_axis == slices.data.init_args.slice_axis == 2
    assert slices.data.init_args.training_mode == "slices" and slices.model.spatial_dims == 2


def test_the_command_line_overrides_a_composed_config():
    cli = resolve(CONFIGS / "demo.yaml", "--trainer.max_epochs", "3", "--data.init_args.batch_size", "2")
    assert cli.trainer.max_epochs == 3 and cli.datamodule.batch_size == 2


def test_classify_demo_resolves_to_its_documented_values():
    config = resolve(CONFIGS / "classify_demo.yaml").config
    assert config.trainer.max_epochs == 15 and config.model.num_classes == 6
    assert config.trainer.logger.init_args.experiment_name == "segpipe-classify-demo"
    assert config.checkpoint.dirpath == "outputs/classify_demo"
    assert config.data.init_args.normalization == "dataset" and config.data.init_args.mean is None


@pytest.mark.parametrize("piece", PIECES, ids=[str(p.relative_to(CONFIGS)) for p in PIECES])
def test_every_shared_piece_is_used_by_an_experiment(piece: Path):
    def included(config: Path) -> set[Path]:
        content = yaml.safe_load(config.read_text()) or {}
        named = {config.parent / v for v in content.values() if isinstance(v, str) and v.endswith(".yaml")}
        return named | {p for n in named for p in included(n.resolve())}

    used = set().union(*(included(e) for e in EXPERIMENTS))
    assert piece.resolve() in {p.resolve() for p in used}
