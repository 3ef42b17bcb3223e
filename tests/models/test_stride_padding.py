"""models/base.py: pad-to-stride and crop, shared by every strided network and its export."""

import pytest
import torch
import torch.nn.functional as F

from segpipe.models import FCN, UNet
from segpipe.models.base import StridedNet, crop_to, pad_to_stride


def test_pad_to_stride_pads_at_the_end_with_zeros():
    x = torch.ones(1, 1, 33, 37)
    padded = pad_to_stride(x, 16)
    assert padded.shape == (1, 1, 48, 48)
    assert padded[..., :33, :37].eq(1).all() and padded.sum() == 33 * 37
    assert pad_to_stride(padded, 16) is padded  # eager: no copy when it already fits
    assert crop_to(padded, (33, 37)).equal(x)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        pad_to_stride(x, 0)


@pytest.mark.parametrize("net", [UNet(2, 1, 3, depth=2, base_channels=4), FCN(2, 1, 3, base_channels=2, fc_channels=8)])
def test_strided_networks_equal_padding_by_hand(net: StridedNet):
    torch.manual_seed(0)
    x = torch.randn(2, 1, 33, 37)
    net.eval()
    stride = net.stride
    by_hand = F.pad(x, [0, (-37) % stride, 0, (-33) % stride])
    with torch.no_grad():
        expected = net.forward_padded(by_hand)[..., :33, :37]
        assert net(x).shape == (2, 3, 33, 37)
        assert torch.equal(net(x), expected)


def test_a_traced_network_pads_other_sizes_as_the_eager_one():
    net = UNet(2, 1, 2, depth=2, base_channels=4).eval()
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.randn(1, 1, 32, 32), check_trace=False)
        x = torch.randn(1, 1, 33, 45)
        assert torch.allclose(traced(x), net(x), atol=1e-6)
