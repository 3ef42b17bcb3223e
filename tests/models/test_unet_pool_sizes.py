"""U-Net ``pool_sizes`` / ``kernel_sizes``: per-axis pooling and kernels for anisotropic volumes."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from segpipe.cli import main
from segpipe.export.onnx_format import onnx_runner, save_onnx
from segpipe.models import UNet, build_model, describe_model_options
from segpipe.models.base import pad_to_stride

ANISOTROPIC_POOLS = [[2, 2, 1], [2, 2, 1], [2, 2, 2]]
ANISOTROPIC_KERNELS = [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3]]


def anisotropic_unet(**kwargs) -> UNet:
    torch.manual_seed(0)
    options = {"depth": 3, "base_channels": 2, "pool_sizes": ANISOTROPIC_POOLS, "kernel_sizes": ANISOTROPIC_KERNELS}
    return UNet(3, 1, 3, **(options | kwargs)).eval()


@pytest.mark.parametrize("upsample", ["transpose", "interp"])
@pytest.mark.parametrize("shape", [(33, 37, 5), (17, 9, 3), (8, 8, 2)])
def test_output_keeps_the_input_size_for_odd_sizes(upsample: str, shape: tuple[int, ...]):
    net = anisotropic_unet(upsample=upsample)
    with torch.no_grad():
        assert net(torch.randn(2, 1, *shape)).shape == (2, 3, *shape)


def test_stride_is_the_product_of_the_pool_sizes_per_axis():
    net = anisotropic_unet()
    assert net.stride == (8, 8, 2)
    assert UNet(3, depth=3).stride == 8  # default: 2**depth on every axis, as before


def test_feature_maps_shrink_per_axis_and_the_bottleneck_keeps_the_coarse_axis():
    net = anisotropic_unet()
    seen: list[tuple[int, ...]] = []
    net.bottleneck.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[2:])))
    with torch.no_grad():
        net(torch.randn(1, 1, 32, 24, 8))
    assert seen == [(4, 3, 4)]  # 32/8, 24/8, 8/2: every axis keeps at least 3 voxels
    first = net.encoder[0][0][0]
    assert first.kernel_size == (3, 3, 1) and first.padding == (1, 1, 0)
    assert net.ups[0].up.stride == (2, 2, 2) and net.ups[-1].up.stride == (2, 2, 1)


def test_padding_is_per_axis_and_equals_padding_by_hand():
    net = anisotropic_unet()
    x = torch.randn(1, 1, 13, 9, 3)
    by_hand = F.pad(x, [0, 1, 0, 7, 0, 3])  # to (16, 16, 4): multiples of (8, 8, 2)
    assert pad_to_stride(x, (8, 8, 2)).equal(by_hand)
    with torch.no_grad():
        assert torch.equal(net(x), net.forward_padded(by_hand)[..., :13, :9, :3])


def test_pad_to_stride_refuses_a_stride_per_axis_of_the_wrong_length():
    with pytest.raises(ValueError, match=r"one value per spatial axis"):
        pad_to_stride(torch.zeros(1, 1, 4, 4), (2, 2, 2))


@pytest.mark.parametrize("upsample", ["transpose", "interp"])
def test_default_options_keep_the_previous_weights_and_outputs(upsample: str):
    torch.manual_seed(0)
    default = UNet(3, 1, 3, depth=3, base_channels=4, upsample=upsample).eval()
    torch.manual_seed(0)
    explicit = UNet(
        3, 1, 3, depth=3, base_channels=4, upsample=upsample, pool_sizes=[[2, 2, 2]] * 3, kernel_sizes=[[3, 3, 3]] * 4
    ).eval()
    x = torch.randn(1, 1, 9, 17, 19, generator=torch.Generator().manual_seed(1))
    for (name, a), (_, b) in zip(default.state_dict().items(), explicit.state_dict().items(), strict=True):
        assert a.shape == b.shape and torch.equal(a, b), name
    with torch.no_grad():
        assert torch.equal(default(x), explicit(x))


def test_default_outputs_equal_those_before_pool_sizes_existed():
    # Logits of this seeded network recorded before per-axis pooling was added.
    torch.manual_seed(0)
    net = UNet(3, 1, 3, depth=3, base_channels=4).eval()
    x = torch.randn(1, 1, 9, 17, 19, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = net(x)
    expected = torch.tensor([-0.130106121301651, -0.13032537698745728, -0.1252051293849945])
    torch.testing.assert_close(out.flatten()[:3], expected, rtol=1e-4, atol=1e-6)
    assert out.double().sum().item() == pytest.approx(-2012.4590467140079, rel=1e-4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pool_sizes": [[2, 2, 1]] * 2}, r"pool_sizes needs 3 entries \(one per level\)"),
        ({"pool_sizes": [[2, 2, 1], [2, 2], [2, 2, 2]]}, r"pool_sizes\[1\] needs 3 sizes \(one per axis\)"),
        ({"pool_sizes": [[2, 2, 0]] * 3}, r"pool_sizes\[0\] must hold ints >= 1"),
        ({"kernel_sizes": [[3, 3, 1]] * 3}, r"kernel_sizes needs 4 entries"),
        ({"kernel_sizes": [[3, 3, 2]] * 4}, r"kernel_sizes\[0\] must hold odd ints >= 1"),
        ({"pool_sizes": ANISOTROPIC_POOLS, "padded": False}, r"need padded=true"),
    ],
)
def test_bad_sizes_are_one_line_value_errors(options: dict, message: str):
    with pytest.raises(ValueError, match=message) as err:
        UNet(3, 1, 2, depth=3, base_channels=2, **options)
    assert "\n" not in str(err.value)


def test_the_options_are_listed_and_accepted_by_the_registry():
    unet_line = next(line for line in describe_model_options() if line.startswith("unet:"))
    assert "pool_sizes=None" in unet_line and "kernel_sizes=None" in unet_line
    net = build_model("unet", 3, 1, 2, depth=3, base_channels=2, pool_sizes=ANISOTROPIC_POOLS)
    assert net.stride == (8, 8, 2)


def test_fit_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "pool_sizes=None" in capsys.readouterr().out


def test_summary_command_runs_an_anisotropic_unet(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    config = tmp_path / "config.yaml"
    config.write_text(
        "model: {model: unet, spatial_dims: 3, num_classes: 3, model_kwargs: "
        f"{{depth: 3, base_channels: 2, pool_sizes: {ANISOTROPIC_POOLS}, kernel_sizes: {ANISOTROPIC_KERNELS}}}}}\n"
        "data: {class_path: segpipe.data.VolumeDataModule, init_args: {root: nowhere}}\n"
    )
    assert main(["summary", "--config", str(config), "--input", "1x1x32x24x8"]) == 0
    out = capsys.readouterr().out
    params = sum(p.numel() for p in anisotropic_unet().parameters())
    assert "Layers for input 1x1x32x24x8" in out and f"{params:,}" in out


def test_torchscript_and_onnx_pad_other_sizes_per_axis_as_pytorch(tmp_path: Path):
    net = anisotropic_unet()
    other = torch.randn(1, 1, 13, 9, 3)
    with torch.no_grad():
        expected = net(other)
        traced = torch.jit.trace(net, torch.randn(1, 1, 16, 16, 4), check_trace=False)
        torch.testing.assert_close(traced(other), expected, atol=1e-5, rtol=1e-5)
        with contextlib.redirect_stdout(io.StringIO()):
            save_onnx(net, torch.randn(1, 1, 16, 16, 4), tmp_path / "unet.onnx", {}, dynamic_spatial=True)
    onnx_logits = torch.from_numpy(onnx_runner(tmp_path / "unet.onnx")(other.numpy()))
    torch.testing.assert_close(onnx_logits, expected, atol=1e-4, rtol=1e-4)
