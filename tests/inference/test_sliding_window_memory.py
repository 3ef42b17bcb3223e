"""Memory options of WindowedInference: stitching device and dtype, in-place softmax, TTA accumulated pass by pass."""

from __future__ import annotations

import pytest
import torch

from segpipe.inference.sliding_window import WindowedInference, softmax_
from segpipe.inference.tta import SLAB_DEPTH, add_flipped_, flip_averaged, flip_combinations
from segpipe.models import UNet
from segpipe.tasks import SegmentationTask


@pytest.fixture
def net_3d() -> UNet:
    torch.manual_seed(0)
    return UNet(3, 1, 4, depth=2, base_channels=4).eval()


@pytest.fixture
def volume() -> torch.Tensor:
    return torch.randn(1, 1, 37, 21, 19, generator=torch.Generator().manual_seed(1))


def mean_over_flips(predict, image: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """The flip average computed whole: every mirrored pass kept, flipped back, stacked and averaged."""
    passes = [
        predict(image.flip([2 + a for a in combo])).flip([2 + a for a in combo]) for combo in flip_combinations(axes)
    ]
    return torch.stack(passes).mean(0)


@torch.no_grad()
def test_float16_stitching_matches_float32_within_tolerance(net_3d: UNet, volume: torch.Tensor):
    window = {"roi": [16, 16, 16], "overlap": 0.5}
    full = WindowedInference(3, **window, dtype="float32").probabilities(net_3d, volume)
    half = WindowedInference(3, **window, dtype="float16").probabilities(net_3d, volume)
    assert full.dtype == torch.float32 and half.dtype == torch.float16
    assert half.shape == full.shape == (1, 4, 37, 21, 19)
    assert (half.float() - full).abs().max().item() < 2e-3
    torch.testing.assert_close(half.float().sum(1), torch.ones(1, 37, 21, 19), atol=3e-3, rtol=0)
    # the labels differ only where two classes are within float16's rounding of each other
    top2 = full.topk(2, dim=1).values
    changed = half.argmax(1) != full.argmax(1)
    assert ((top2[:, 0] - top2[:, 1])[changed] < 2e-3).all()


@torch.no_grad()
def test_float32_stitching_on_the_cpu_equals_the_logits_softmax(net_3d: UNet, volume: torch.Tensor):
    inference = WindowedInference(3, roi=[16, 16, 16], device="cpu")
    expected = inference.logits(net_3d, volume).softmax(1)
    torch.testing.assert_close(inference.probabilities(net_3d, volume), expected, rtol=0, atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("axes", [(0,), (1, 2), (0, 1, 2)])
def test_tta_accumulated_in_place_equals_the_whole_flip_average(net_3d: UNet, volume: torch.Tensor, axes):
    inference = WindowedInference(3, roi=[16, 16, 16], dtype="float32")
    accumulated = inference.probabilities(net_3d, volume, tta_axes=axes)
    expected = mean_over_flips(lambda x: inference.logits(net_3d, x).softmax(1), volume, axes)
    torch.testing.assert_close(accumulated, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dims", [[], [2], [3, 4], [2, 3, 4]])
def test_add_flipped_slab_by_slab_equals_adding_the_whole_flip(dims: list[int]):
    generator = torch.Generator().manual_seed(2)
    total, part = torch.randn(2, 3, 2 * SLAB_DEPTH + 5, 7, 6, generator=generator).unbind(0)
    total, part = total[None], part[None]
    expected = total + (part.flip(dims) if dims else part)
    torch.testing.assert_close(add_flipped_(total.clone(), part.half(), dims), expected, rtol=0, atol=2e-3)
    assert torch.equal(add_flipped_(total.clone(), part, dims), expected)


def test_flip_averaged_returns_the_first_pass_tensor_as_accumulator():
    image = torch.arange(12.0).reshape(1, 1, 3, 4)
    outputs: list[torch.Tensor] = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        outputs.append(x * 2)
        return outputs[-1]

    averaged = flip_averaged(predict, image, (0, 1))
    assert averaged is outputs[0] and len(outputs) == 4
    torch.testing.assert_close(averaged, image * 2)


def test_softmax_in_place_equals_softmax():
    logits = torch.randn(1, 4, SLAB_DEPTH + 3, 5, 2, generator=torch.Generator().manual_seed(3)) * 10
    expected = logits.softmax(1)
    result = softmax_(logits)
    assert result is logits
    torch.testing.assert_close(result, expected)


def test_auto_dtype_is_float16_on_cuda_and_float32_on_the_cpu():
    auto = WindowedInference(3)
    assert auto.stitch_dtype(torch.device("cuda")) == torch.float16
    assert auto.stitch_dtype(torch.device("cpu")) == torch.float32
    assert WindowedInference(3, dtype="float32").stitch_dtype(torch.device("cuda")) == torch.float32
    assert auto.stitch_device(torch.zeros(1)) == torch.device("cpu")
    assert WindowedInference(3, device="cpu").stitch_device(torch.zeros(1)) == torch.device("cpu")


def test_an_unknown_dtype_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"auto, float32, float16.*bfloat16"):
        WindowedInference(3, dtype="bfloat16")  # type: ignore[arg-type]


@torch.no_grad()
def test_task_options_set_the_predicted_probabilities_dtype_and_device(volume: torch.Tensor):
    torch.manual_seed(0)
    options = {"model_kwargs": {"depth": 2, "base_channels": 4}, "inference_roi": [16, 16, 16]}
    task = SegmentationTask(spatial_dims=3, num_classes=4, inference_device="cpu", inference_dtype="float16", **options)
    probabilities = task.eval().predict_probabilities(volume)
    assert probabilities.dtype == torch.float16 and probabilities.device == torch.device("cpu")
    reference = WindowedInference(3, roi=[16, 16, 16], dtype="float32").probabilities(task.net, volume)
    assert (probabilities.float() - reference).abs().max().item() < 2e-3
    assert task.infer(volume).dtype == torch.float32  # validation and test keep float32 logits
