"""WindowedInference: whole inputs through a network, as SegmentationTask ran them before the move."""

from __future__ import annotations

import pytest
import torch

from segpipe.inference.sliding_window import WindowedInference
from segpipe.models import UNet


@pytest.fixture
def net_2d() -> UNet:
    torch.manual_seed(0)
    return UNet(2, 1, 3, depth=2, base_channels=4).eval()


@torch.no_grad()
@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_a_2d_network_scores_a_volume_slice_by_slice(net_2d: UNet, slice_axis: int):
    volume = torch.randn(2, 1, 9, 11, 13)
    logits = WindowedInference(2, batch_size=4, slice_axis=slice_axis).logits(net_2d, volume)
    assert logits.shape == (2, 3, 9, 11, 13)
    for index in (0, volume.shape[2 + slice_axis] - 1):
        plane = volume.select(2 + slice_axis, index)
        torch.testing.assert_close(logits.select(2 + slice_axis, index), net_2d(plane), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_without_roi_one_pass_and_with_a_whole_input_roi_the_same_logits(net_2d: UNet):
    image = torch.randn(1, 1, 33, 37)
    assert torch.equal(WindowedInference(2).logits(net_2d, image), net_2d(image))
    windowed = WindowedInference(2, roi=[33, 37], overlap=0.5).logits(net_2d, image)
    torch.testing.assert_close(windowed, net_2d(image), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_probabilities_are_softmax_of_logits_averaged_over_flips(net_2d: UNet):
    image, inference = torch.randn(1, 1, 32, 32), WindowedInference(2)
    plain = inference.probabilities(net_2d, image)
    torch.testing.assert_close(plain, net_2d(image).softmax(1))
    flipped = inference.probabilities(net_2d, image, tta_axes=(1,))
    expected = (net_2d(image).softmax(1) + net_2d(image.flip(3)).softmax(1).flip(3)) / 2
    torch.testing.assert_close(flipped, expected)
