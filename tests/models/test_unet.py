import pytest
import torch

from segpipe.models import UNet


@pytest.mark.parametrize("upsample", ["transpose", "interp"])
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("shape", [(37, 33), (11, 13, 9)])
def test_unet_options_keep_the_input_size(upsample: str, padded: bool, shape: tuple[int, ...]):
    net = UNet(len(shape), in_channels=2, num_classes=3, depth=2, base_channels=4, upsample=upsample, padded=padded)
    assert net(torch.randn(1, 2, *shape)).shape == (1, 3, *shape)


def test_unpadded_unet_sizes_follow_the_paper():
    net = UNet(depth=4, base_channels=2, norm=None, padded=False)
    # Ronneberger et al. Fig. 1: a 572x572 tile gives a 388x388 output.
    assert net.output_size(572) == 388
    assert net.output_size(571) == -1
    assert net.valid_input_size(388) == 572


def test_batch_norm_switch():
    with_bn = UNet(depth=1, base_channels=4, norm="batch")
    without = UNet(depth=1, base_channels=4, norm=None)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in with_bn.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in without.modules())
