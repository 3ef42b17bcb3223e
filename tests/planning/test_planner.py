"""plan_experiment's decisions on hand-made fingerprints: pooling, memory, normalisation, loss, networks."""

from __future__ import annotations

import pytest

from segpipe.planning import DatasetFingerprint, plan_experiment
from segpipe.planning.networks import plan_network
from segpipe.planning.planner import PlanError
from segpipe.planning.topology import CPU_MAX_POOLINGS, pooling, target_spacing

GiB = 2**30


def fingerprint(
    shape: list[int],
    spacing: list[float],
    cases: int = 10,
    modality: list[str] | None = None,
    class_fraction: tuple[float, ...] = (0.8, 0.1, 0.1),
    layout: str = "images_labels",
    spread: float = 0.05,
    symmetry: list[float] | None = None,
) -> DatasetFingerprint:
    intensity = {"mean": 1.0, "std": 1.0, "median": 1.0, "p0_5": 0.0, "p99_5": 2.0, "min": 0.0, "max": 2.0}
    classes = len(class_fraction)
    return DatasetFingerprint(
        root="data/set",
        layout=layout,
        spatial_dims=len(shape),
        case_names=[f"case{i}" for i in range(cases)],
        shapes=[list(shape)] * cases,
        spacings=[list(spacing)] * cases,
        in_channels=1,
        class_names=["background", *(f"c{k}" for k in range(1, classes))],
        modality=modality,
        image_mean=[0.0],
        image_std=[1.0],
        foreground_intensity=[intensity],
        foreground_mean_spread=[spread],
        class_fraction=list(class_fraction),
        smallest_class_voxels=[None] * classes,
        smallest_class_mm3=[None] * classes,
        smallest_component_voxels=[None] * classes,
        smallest_component_mm3=[None] * classes,
        mirror_symmetry=symmetry if symmetry is not None else [1.0] * len(shape),
    )


def test_anisotropic_spacing_pools_the_coarse_axis_later(monkeypatch: pytest.MonkeyPatch):
    # 0.8 -> 1.6 -> 3.2 mm in-plane before z (4 mm) is pooled; z stops at 24 / 4 = 6 voxels (>= 4)
    assert pooling([0.8, 0.8, 4.0], [160, 160, 24]) == [[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 1]]
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    plan = plan_experiment(fingerprint([160, 160, 24], [0.8, 0.8, 4.0]), device_memory=64 * GiB)
    kwargs = plan.config["model"]["model_kwargs"]
    # a CPU plan stops at CPU_MAX_POOLINGS levels
    assert kwargs["pool_sizes"] == [[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]]
    assert kwargs["depth"] == CPU_MAX_POOLINGS == 4
    assert plan.config["data"]["init_args"]["patch_size"] == [160, 160, 24]
    assert "anisotropic" in plan.reasons["model.model_kwargs.pool_sizes"]


def test_isotropic_volumes_pool_every_axis_and_keep_four_voxels():
    plan = plan_experiment(fingerprint([64, 64, 64], [1.0, 1.0, 1.0]), device_memory=64 * GiB)
    kwargs = plan.config["model"]["model_kwargs"]
    assert "pool_sizes" not in kwargs
    patch = plan.config["data"]["init_args"]["patch_size"]
    assert all(size / 2 ** kwargs["depth"] >= 4 for size in patch)
    assert kwargs["depth"] == 4 and patch == [64, 64, 64]
    # an axis too short for another pooling stops while the others go on
    assert pooling([1, 1, 1], [64, 64, 40]) == [[2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 1]]


def test_target_spacing_takes_the_10th_percentile_of_a_thin_anisotropic_axis():
    spacings = [[0.8, 0.8, 5.0]] * 9 + [[0.8, 0.8, 2.5]]
    spacing, reason = target_spacing(spacings, [[256, 256, 30]] * 10)
    assert spacing == pytest.approx([0.8, 0.8, 4.75]) and "10th percentile" in reason
    assert target_spacing([[1.0, 1.0, 1.5]] * 3, [[64, 64, 64]] * 3)[0] == [1.0, 1.0, 1.5]


def test_a_smaller_memory_budget_gives_a_smaller_patch_and_batch():
    data = fingerprint([192, 192, 128], [1.0, 1.0, 1.0], cases=200)
    large = plan_experiment(data, device_memory=24 * GiB).config["data"]["init_args"]
    small = plan_experiment(data, device_memory=1 * GiB).config["data"]["init_args"]
    large_voxels = large["patch_size"][0] * large["patch_size"][1] * large["patch_size"][2]
    small_voxels = small["patch_size"][0] * small["patch_size"][1] * small["patch_size"][2]
    assert small_voxels < large_voxels
    assert small["batch_size"] * small_voxels < large["batch_size"] * large_voxels
    assert small["batch_size"] >= 2


def test_ct_is_clipped_to_dataset_percentiles_and_mr_is_zscored_per_volume():
    ct = plan_experiment(fingerprint([64, 64, 32], [1, 1, 1], modality=["CT"]), device_memory=8 * GiB)
    mr_args = dict(modality=["T1"], spread=0.4)  # MR cases whose scales differ
    mr = plan_experiment(fingerprint([64, 64, 32], [1, 1, 1], **mr_args), device_memory=8 * GiB)
    ct_args, mr_args = ct.config["data"]["init_args"], mr.config["data"]["init_args"]
    assert (ct_args["normalization"], ct_args["ct_percentiles"], ct_args["ct_statistics"]) == (
        "ct",
        [0.5, 99.5],
        "dataset",
    )
    assert mr_args["normalization"] == "zscore" and "ct_percentiles" not in mr_args
    assert "mean" not in ct_args and "std" not in ct_args  # never a typed constant


def test_2d_images_sharing_a_scale_use_the_dataset_statistics():
    plan = plan_experiment(fingerprint([64, 48], [1.0, 1.0], layout="folder"), device_memory=8 * GiB)
    data = plan.config["data"]
    assert data["class_path"] == "segpipe.data.FolderDataModule"
    assert data["init_args"]["normalization"] == "dataset"
    assert [t["name"] for t in data["init_args"]["train_transforms"]][:2] == ["HorizontalFlip", "VerticalFlip"]
    assert plan.config["model"]["spatial_dims"] == 2 and plan.config["model"]["inference_roi"] is None


def test_few_slices_are_planned_as_2d_slices_along_the_coarse_axis():
    plan = plan_experiment(fingerprint([128, 128, 6], [1.0, 1.0, 1.0]), device_memory=8 * GiB)
    init_args = plan.config["data"]["init_args"]
    assert init_args["training_mode"] == "slices" and init_args["slice_axis"] == 2
    assert plan.config["model"]["slice_axis"] == 2 and plan.config["model"]["spatial_dims"] == 2
    assert len(init_args["patch_size"]) == 2


def test_a_rare_class_gets_a_focal_term():
    rare = plan_experiment(fingerprint([64, 64, 32], [1, 1, 1], class_fraction=(0.995, 0.004, 0.001)))
    common = plan_experiment(fingerprint([64, 64, 32], [1, 1, 1]))
    assert rare.config["model"]["loss"] == "dice_focal" and common.config["model"]["loss"] == "dice_ce"


@pytest.mark.parametrize(
    ("network", "expected"),
    [
        ("segnet", {"base_channels": 16, "stage_convs": [2, 2, 3, 3], "norm": "batch"}),
        ("fcn", {"base_channels": 16, "fc_channels": 128, "fc_kernel": 3, "dropout": 0.0, "norm": "batch"}),
        (
            "dense_unet",
            {
                "down_blocks": [2, 2, 2, 2],
                "bottleneck_layers": 2,
                "growth_rate": 8,
                "init_features": 16,
                "dropout": 0.0,
                "norm": "batch",
            },
        ),
    ],
)
def test_each_network_gets_its_own_settings(network: str, expected: dict, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    plan = plan_experiment(fingerprint([256, 256], [1.0, 1.0], layout="folder"), network=network, device_memory=8 * GiB)
    assert plan.config["model"]["model"] == network
    assert plan.config["model"]["model_kwargs"] == expected
    assert plan.config["model"]["optimizer"]["init_args"]["lr"] == 1e-3


def test_a_dense_unet_for_a_gpu_has_fc_densenet103_blocks():
    kwargs = plan_network("dense_unet", 2, [[2, 2]] * 4, 32, gpu=True).model_kwargs
    assert (kwargs["down_blocks"], kwargs["bottleneck_layers"]) == ([4, 5, 7, 10], 15)
    assert (kwargs["growth_rate"], kwargs["init_features"]) == (16, 96)


def test_plans_that_cannot_be_made_are_refused_in_one_line():
    with pytest.raises(PlanError, match="Did you mean 'segnet'"):
        plan_experiment(fingerprint([64, 48], [1.0, 1.0], layout="folder"), network="segnt")
    with pytest.raises(PlanError, match="needs volumes"):
        plan_experiment(fingerprint([64, 48], [1.0, 1.0], layout="folder"), dims="3d")
    with pytest.raises(PlanError, match="fits the memory budget"):
        plan_experiment(fingerprint([64, 64, 64], [1.0, 1.0, 1.0]), device_memory=2**20)


def test_mr_volumes_sharing_one_scale_use_the_dataset_foreground_statistics():
    plan = plan_experiment(fingerprint([64, 64, 32], [1, 1, 1], modality=["T1"], spread=0.06), device_memory=8 * GiB)
    args = plan.config["data"]["init_args"]
    assert (args["normalization"], args["ct_percentiles"], args["ct_statistics"]) == ("ct", [0.5, 99.5], "dataset")
    assert plan.reasons["data.init_args.normalization"].startswith("cases share one intensity scale (foreground")
