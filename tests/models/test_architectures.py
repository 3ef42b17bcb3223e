"""Every architecture trains through SegmentationTask, in 2D and in 3D, and every config builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from segpipe.cli import main
from segpipe.tasks import SegmentationTask

SMALL = {
    "unet": {"depth": 2, "base_channels": 4},
    "dense_unet": {"growth_rate": 4, "down_blocks": [2, 2], "bottleneck_layers": 2, "init_features": 8, "dropout": 0.0},
    "segnet": {"base_channels": 4, "stage_convs": [1, 1, 1]},
    "fcn8s": {"base_channels": 4, "fc_channels": 16, "norm": "batch", "dropout": 0.0},
}
# `segpipe fit` configs; classify_*.yaml and pretrained_unet.yaml (which needs the classify checkpoint)
# are exercised in test_classification.py.
CONFIGS = sorted(
    c
    for c in Path(__file__).parents[2].joinpath("configs").glob("*.yaml")
    if not c.stem.startswith("classify") and c.stem != "pretrained_unet"
)


def blob_batch(spatial: tuple[int, ...], seed: int = 0) -> dict[str, torch.Tensor]:
    """Bright centred blob (class 1) in noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in spatial], indexing="ij")
    radius = sum(x**2 for x in grids).sqrt()
    mask = (radius < 0.5).long().expand(2, *spatial).clone()
    image = mask.float().unsqueeze(1) * 2 + 0.3 * torch.randn(2, 1, *spatial, generator=g)
    return {"image": image, "mask": mask}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("arch", sorted(SMALL))
def test_each_architecture_trains_through_the_task(arch: str, spatial_dims: int):
    torch.manual_seed(0)
    # Sizes that are not multiples of the total stride (32 for SegNet/FCN).
    spatial = (37, 33) if spatial_dims == 2 else (19, 17, 21)
    kwargs = dict(SMALL[arch])
    if arch == "segnet" and spatial_dims == 2:
        kwargs["stage_convs"] = [1, 1, 1, 1, 1]
    task = SegmentationTask(
        model=arch,
        spatial_dims=spatial_dims,
        num_classes=2,
        model_kwargs=kwargs,
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
    )
    optimizer = task.configure_optimizers()
    batch = blob_batch(spatial)
    assert task(batch["image"]).shape == (2, 2, *spatial)
    losses = []
    for step in range(12):
        optimizer.zero_grad()
        loss = task.training_step(batch, step)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_resolves_and_builds_its_model(config: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    model_config = {k: v for k, v in resolved["model"].items() if k not in ("optimizer", "lr_scheduler")}
    task = SegmentationTask(**model_config)
    assert task.hparams.num_classes == len(resolved["model"]["class_names"])
    assert resolved["checkpoint"]["monitor"] == "val/dice"
