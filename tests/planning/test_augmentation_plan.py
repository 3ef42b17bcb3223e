"""The planned augmentation: mirroring only along axes where the dataset is symmetric, nnU-Net's whole set
only for long runs, test-time mirroring of the trained axes; and the class names of a folder's dataset.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import write_dataset
from PIL import Image
from test_planner import GiB, fingerprint

from segpipe.errors import DataError
from segpipe.inference.sliding_window import WindowedInference
from segpipe.planning import dataset_fingerprint, plan_experiment
from segpipe.planning.augmentation import FULL_AUGMENTATION_EPOCHS, MIRROR_SYMMETRY
from segpipe.planning.data_config import with_augmentation
from segpipe.planning.statistics import StatisticsAccumulator, mirror_symmetry


def test_mirror_symmetry_of_the_mean_label_map():
    layout = np.zeros((2, 4, 4))
    layout[1, :2, 1:3] = 3.0  # class 1 in the top half, centred left-right, in 3 cases
    assert mirror_symmetry(layout, np.array([10, 6])) == pytest.approx([0.0, 1.0])
    layout[1, 2:, 1:3] = 1.0  # and in the bottom half of 1 case: min(3, 1) in 8 cells of a map summing to 16
    assert mirror_symmetry(layout, np.array([10, 8])) == pytest.approx([8 / 16, 1.0])


def test_cases_of_different_sizes_add_up_on_one_grid():
    accumulator = StatisticsAccumulator(num_classes=2)
    for height, width in ((40, 30), (64, 48)):
        label = np.zeros((height, width), np.int64)
        label[: height // 4] = 1  # a band at the top of every case
        accumulator.add(np.ones((1, height, width)), label, (1.0, 1.0))
    symmetry = accumulator.result()["mirror_symmetry"]
    assert symmetry[0] == pytest.approx(0.0) and symmetry[1] == pytest.approx(1.0)


def test_a_folder_mirrors_its_symmetric_axis_and_tests_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = write_dataset(tmp_path / "data", n=6, height=32, width=32)
    for mask_path in (root / "masks").glob("*.png"):  # class 1 in the top rows of every case, left-right symmetric
        mask = np.zeros((32, 32), np.uint8)
        mask[2:10, 4:28] = 1
        Image.fromarray(mask).save(mask_path)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    fp = dataset_fingerprint(root, use_cache=False)
    assert fp.mirror_symmetry[0] < MIRROR_SYMMETRY <= fp.mirror_symmetry[1]
    plan = plan_experiment(fp, device_memory=8 * GiB)
    names = [t["name"] for t in plan.config["data"]["init_args"]["train_transforms"]]
    assert "HorizontalFlip" in names and "VerticalFlip" not in names
    assert plan.config["model"]["tta"] == [1]
    assert "axis 0 0.00" in plan.reasons["data.init_args.train_transforms"]


@pytest.mark.parametrize(("epochs", "full"), [(FULL_AUGMENTATION_EPOCHS - 1, False), (FULL_AUGMENTATION_EPOCHS, True)])
def test_only_long_runs_get_the_whole_augmentation(epochs: int, full: bool):
    fp = fingerprint([64, 64, 64], [1.0, 1.0, 1.0], symmetry=[1.0, 0.5, 0.95])
    plan = plan_experiment(fp, device_memory=8 * GiB)
    config, reasons = with_augmentation(plan.config, fp, epochs)
    entries = config["data"]["init_args"]["augmentation"]
    flips = [e["spatial_axis"] for e in entries if e["name"] == "RandFlipd"]
    assert flips == [[0], [2]]
    assert any(e["name"] == "RandRotated" for e in entries) is full
    assert len(entries) == (9 if full else 2)
    assert config["model"]["tta"] == [0, 2]
    assert f"{epochs} epochs" in reasons["data.init_args.augmentation"]


def test_slices_mirror_and_test_in_their_own_plane():
    # few slices along axis 0: planned as 2D slices cut along axis 0; axes 1 and 2 are the slice's 0 and 1
    fp = fingerprint([6, 96, 80], [4.0, 1.0, 1.0], symmetry=[1.0, 0.3, 1.0])
    plan = plan_experiment(fp, dims="slices", device_memory=8 * GiB)
    assert plan.config["data"]["init_args"]["slice_axis"] == 0
    assert plan.config["model"]["tta"] == [1]  # volume axis 2 is the slice's axis 1


def test_a_2d_network_on_volumes_mirrors_the_slice_axes():
    seen: list[torch.Tensor] = []

    def net(slices: torch.Tensor) -> torch.Tensor:
        seen.append(slices.clone())
        return torch.zeros(slices.shape[0], 2, *slices.shape[2:])

    volume = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 1, 2, 3, 4)
    WindowedInference(2, slice_axis=0, dtype="float32").probabilities(net, volume, tta_axes=[1])
    # two passes of the 2 slices (each 3 x 4): as they are, then mirrored along volume axis 2
    assert torch.equal(seen[1], volume[0, :, :].movedim(1, 0).flip(-1))


def test_a_folder_takes_its_class_names_from_dataset_json(tmp_path: Path):
    root = write_dataset(tmp_path / "data", n=4)
    declaration = {"channel_names": {"0": "RGB"}, "labels": {"background": 0, "cell": 1, "nucleus": 2}}
    (root / "dataset.json").write_text(json.dumps({**declaration, "numTraining": 4, "file_ending": ".png"}))
    assert dataset_fingerprint(root, use_cache=False).class_names == ["background", "cell", "nucleus"]
    (root / "dataset.json").write_text(
        json.dumps({**declaration, "labels": {"background": 0}, "numTraining": 4, "file_ending": ".png"})
    )
    with pytest.raises(DataError, match=r"dataset.json: declares 1 labels, but the masks hold labels up to 2"):
        dataset_fingerprint(root, use_cache=False)
