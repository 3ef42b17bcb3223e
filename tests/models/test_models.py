"""Architectures: published parameter counts, odd sizes in 2D/3D, gradients, learning, special layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segpipe.errors import SegpipeError
from segpipe.models import (
    FCN,
    MODELS,
    DenseUNet,
    SegNet,
    UNet,
    build_model,
    check_model_options,
    fc_densenet103,
    model_options,
)
from segpipe.models.blocks import MaxPoolWithIndices, MaxUnpool, bilinear_kernel
from segpipe.models.fcn import BilinearUp

# Small configurations: fast on a CPU in 2D and 3D. Dropout off so that training is deterministic; the
# FCNs get batch norm, without which a 2-channel VGG trained from scratch often stalls in 10 steps.
SMALL: dict[str, dict[str, object]] = {
    "unet": {"depth": 2, "base_channels": 2},
    "dense_unet": {
        "growth_rate": 2,
        "down_blocks": (2, 2),
        "bottleneck_layers": 2,
        "init_features": 4,
        "dropout": 0.0,
    },
    "dense_unet_conv": {
        "growth_rate": 2,
        "down_blocks": (2,),
        "bottleneck_layers": 2,
        "init_features": 4,
        "dropout": 0.0,
        "decoder": "conv",
    },
    "segnet": {"base_channels": 2},
    "fcn8s": {"base_channels": 2, "fc_channels": 8, "fc_kernel": 3, "dropout": 0.0, "norm": "batch"},
    "fcn16s": {"base_channels": 2, "fc_channels": 8, "fc_kernel": 3, "dropout": 0.0, "norm": "batch"},
    "fcn32s": {"base_channels": 2, "fc_channels": 8, "fc_kernel": 3, "dropout": 0.0, "norm": "batch"},
}
ARCHITECTURES_3D = ["unet", "dense_unet", "segnet", "fcn8s"]
ODD_SHAPES = {2: (33, 37), 3: (17, 19, 21)}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # tiny tensors: waking a second OpenMP thread costs more than the work itself
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small(name: str, spatial_dims: int, in_channels: int = 1, num_classes: int = 3, **extra: object) -> nn.Module:
    key = "dense_unet" if name == "dense_unet_conv" else name
    return build_model(key, spatial_dims, in_channels, num_classes, **{**SMALL[name], **extra})


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(factory, **kwargs: object) -> nn.Module:
    with torch.device("meta"):
        return factory(**kwargs)


@pytest.mark.parametrize(
    ("factory", "kwargs", "published", "exact"),
    [
        (UNet, {"in_channels": 1, "num_classes": 2, "norm": None, "padded": False}, 31.0e6, 31_030_658),
        (SegNet, {"in_channels": 3, "num_classes": 11}, 29.5e6, 29_441_419),
        (FCN, {"in_channels": 3, "num_classes": 21, "variant": "8s"}, 134e6, 134_489_759),
        (fc_densenet103, {"in_channels": 3, "num_classes": 11}, 9.4e6, 9_322_091),
    ],
    ids=["unet", "segnet", "fcn8s", "fc_densenet103"],
)
def test_canonical_parameter_counts(factory, kwargs, published, exact):
    model = on_meta(factory, **kwargs)
    count = n_params(model)
    assert count == exact
    assert abs(count - published) / published < 0.01


def test_fc_densenet103_matches_paper_with_batchnorm_statistics():
    # The authors' Lasagne count_params also counts BatchNorm mean / inv_std: 9.4M in the paper.
    model = on_meta(fc_densenet103, in_channels=3, num_classes=11)
    bn = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert abs(n_params(model) + 2 * bn - 9.4e6) / 9.4e6 < 0.005


def test_segnet_encoder_is_vgg16_bn():
    model = on_meta(SegNet, in_channels=3, num_classes=11, norm=None)
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    assert sum(n_params(c) for c in convs) == 14_714_688  # VGG16's 13 conv layers


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("norm", ["batch", "instance", "group", None])
@pytest.mark.parametrize("name", list(SMALL))
def test_output_has_input_size_for_odd_shapes(name, norm, spatial_dims):
    torch.manual_seed(0)
    model = small(name, spatial_dims, in_channels=2, num_classes=3, norm=norm)
    x = torch.randn(2, 2, *ODD_SHAPES[spatial_dims])
    out = model(x)
    assert out.shape == (2, 3, *ODD_SHAPES[spatial_dims])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_canonical_configs_keep_odd_shapes(spatial_dims):
    # shape propagation on the meta device: no memory, no compute
    shape = ODD_SHAPES[spatial_dims]
    with torch.device("meta"):
        models = [
            (UNet(spatial_dims, 1, 2), 1),
            (UNet(spatial_dims, 1, 2, norm=None, padded=False), 1),
            (SegNet(spatial_dims, 3, 11), 3),
            (fc_densenet103(spatial_dims, 3, 11), 3),
            (FCN(spatial_dims, 3, 21, fc_kernel=7 if spatial_dims == 2 else 3), 3),
        ]
        for model, in_channels in models:
            out = model.eval()(torch.zeros(1, in_channels, *shape))
            assert tuple(out.shape[2:]) == shape


@pytest.mark.parametrize("name", ARCHITECTURES_3D)
def test_3d_forward_backward_on_64_cube(name):
    torch.manual_seed(0)
    model = small(name, 3, num_classes=2)
    x = torch.randn(1, 1, 64, 64, 64)
    out = model(x)
    assert out.shape == (1, 2, 64, 64, 64)
    (out * torch.randn_like(out)).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def _synthetic_problem(spatial_dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two noisy images, one dark (class 0) and one bright (class 1): learnable even at stride 32."""
    generator = torch.Generator().manual_seed(0)
    size = (24, 24) if spatial_dims == 2 else (12, 12, 12)
    level = torch.tensor([-1.0, 1.0]).view(2, 1, *(1,) * spatial_dims)
    x = level + 0.5 * torch.randn(2, 1, *size, generator=generator)
    y = (level > 0).long().expand(2, 1, *size)[:, 0]
    return x, y


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", list(SMALL))
def test_adam_steps_reduce_loss(name, spatial_dims):
    torch.manual_seed(0)
    model = small(name, spatial_dims, num_classes=2)
    x, y = _synthetic_problem(spatial_dims)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("variant", ["8s", "16s", "32s"])
def test_fcn_upsampling_is_bilinear_at_init(variant, spatial_dims):
    model = FCN(spatial_dims, 1, 3, variant=variant, base_channels=4, fc_channels=8)
    ups = [m for m in model.modules() if isinstance(m, BilinearUp)]
    assert len(ups) == {"32s": 1, "16s": 2, "8s": 3}[variant]
    for up in ups:
        weight = up.up.weight
        kernel = bilinear_kernel(spatial_dims, weight.shape[-1])
        for i in range(3):
            for j in range(3):
                expected = kernel if i == j else torch.zeros_like(kernel)
                torch.testing.assert_close(weight[i, j], expected)
    # the skip scores start at zero, so the untrained net is FCN-32s
    for name in ("score_pool4", "score_pool3"):
        if hasattr(model, name):
            assert getattr(model, name).weight.abs().sum() == 0


def test_bilinear_up_interpolates():
    up = BilinearUp(2, 1, 2)
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    expected = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    # equal away from the border, where the transposed conv sees zero padding instead of edge values
    torch.testing.assert_close(up(x)[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1])
    assert torch.tensor([0.25, 0.75, 0.75, 0.25]).allclose(bilinear_kernel(2, 4)[0] / 0.25)


@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (1, 2, 5, 7, 9)])
def test_max_unpool_puts_values_at_argmax_positions(shape):
    spatial_dims = len(shape) - 2
    x = torch.randn(shape)
    pooled, indices, size = MaxPoolWithIndices(spatial_dims)(x)
    restored = MaxUnpool(spatial_dims)(pooled, indices, size)
    assert restored.shape == x.shape
    flat_x, flat_r = x.flatten(2), restored.flatten(2)
    flat_i = indices.flatten(2)
    torch.testing.assert_close(flat_r.gather(2, flat_i), flat_x.gather(2, flat_i))
    torch.testing.assert_close(flat_x.gather(2, flat_i), pooled.flatten(2))
    mask = torch.zeros_like(flat_r, dtype=torch.bool).scatter_(2, flat_i, True)
    assert (flat_r[~mask] == 0).all()
    assert (flat_r[mask] == flat_x[mask]).all()


@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (1, 2, 5, 7, 9)])
def test_deterministic_unpool_matches_the_pytorch_kernel_in_values_and_gradients(shape):
    # trainer.deterministic: true switches MaxUnpool to a scatter, since PyTorch's kernel refuses to run.
    spatial_dims = len(shape) - 2
    pooled, indices, size = MaxPoolWithIndices(spatial_dims)(torch.randn(shape))
    unpool = MaxUnpool(spatial_dims)
    results = []
    for deterministic in (False, True):
        x = pooled.detach().clone().requires_grad_()
        torch.use_deterministic_algorithms(deterministic)
        try:
            out = unpool(x, indices, size)
            (out * torch.arange(out.numel()).reshape(out.shape)).sum().backward()
        finally:
            torch.use_deterministic_algorithms(False)
        results.append((out.detach(), x.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=0)
    assert results[0][0].count_nonzero() == pooled.count_nonzero()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_segnet_trains_under_deterministic_algorithms(spatial_dims):
    torch.manual_seed(0)
    model = SegNet(spatial_dims, 1, 2, base_channels=2)
    x = torch.randn(2, 1, *(9,) * spatial_dims)
    reference = model(x)
    torch.use_deterministic_algorithms(True)
    try:
        out = model(x)
        out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    torch.testing.assert_close(out, reference)
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


def test_segnet_decoder_unpools_with_encoder_indices():
    model = SegNet(2, 1, 2, base_channels=4).eval()
    pool_indices, unpool_indices = [], []
    for stage in model.encoder:
        stage.pool.register_forward_hook(lambda m, a, out: pool_indices.append(out[1]))
    for stage in model.decoder:
        stage.unpool.register_forward_hook(lambda m, a, out: unpool_indices.append(a[1]))
    with torch.no_grad():
        model(torch.randn(1, 1, 33, 37))
    assert len(pool_indices) == len(unpool_indices) == 5
    for pooled, unpooled in zip(reversed(pool_indices), unpool_indices, strict=True):
        assert unpooled is pooled


def test_registry_has_every_architecture():
    expected = {"unet", "dense_unet", "fc_densenet103", "segnet", "fcn", "fcn8s", "fcn16s", "fcn32s"}
    assert expected <= set(MODELS)
    model = build_model("fcn", 2, 1, 2, variant="16s", base_channels=4, fc_channels=8)
    assert isinstance(model, FCN) and model.variant == "16s"
    assert build_model("FCN8s", 2, 1, 2, base_channels=4, fc_channels=8).variant == "8s"
    assert isinstance(build_model("dense_unet", 2, 1, 2, **SMALL["dense_unet"]), DenseUNet)


def test_unknown_model_suggests_close_name():
    with pytest.raises(ValueError, match=r"(?i)did you mean 'unet'"):
        build_model("unett", 2, 1, 2)


@pytest.mark.parametrize(
    ("factory", "kwargs", "message"),
    [
        (FCN, {"variant": "4s"}, "'4s'"),
        (FCN, {"fc_kernel": 4}, "fc_kernel"),
        (SegNet, {"stage_convs": ()}, "stage_convs"),
        (SegNet, {"norm": "layer"}, "'layer'"),
        (DenseUNet, {"up_blocks": (1,)}, "up_blocks"),
        (DenseUNet, {"decoder": "deconv"}, "'deconv'"),
        (DenseUNet, {"compression": 0.0}, "compression"),
        (UNet, {"spatial_dims": 4}, "spatial_dims"),
    ],
)
def test_bad_arguments_raise_value_error(factory, kwargs, message):
    with pytest.raises(ValueError, match=message), torch.device("meta"):
        factory(**kwargs)


def test_a_mistyped_model_option_names_the_key_a_suggestion_and_the_valid_options():
    with pytest.raises(SegpipeError) as error:
        build_model("unet", 2, 1, 2, dept=3)
    assert str(error.value) == (
        "model 'unet' has no option 'dept' in model_kwargs (did you mean 'depth'?); its options, with their "
        "defaults: depth=4, base_channels=64, norm='batch', upsample='transpose', padded=True, dropout=0.0, "
        "pool_sizes=None, kernel_sizes=None"
    )
    with pytest.raises(SegpipeError, match=r"set it as model\.in_channels, not inside model_kwargs"):
        check_model_options("unet", {"in_channels": 3})


def test_preset_options_are_those_of_their_family_without_the_fixed_ones():
    assert model_options("fcn8s") == {
        "base_channels": 64,
        "fc_channels": 4096,
        "fc_kernel": 7,
        "dropout": 0.5,
        "norm": None,
    }
    assert model_options("FC-DenseNet56") == {"dropout": 0.2, "norm": "batch"}
    net = build_model("fcn16s", 2, 1, 2, base_channels=2, fc_channels=4)
    assert isinstance(net, FCN) and net.variant == "16s"
    with pytest.raises(SegpipeError, match="has no option 'variant'"):
        build_model("fcn16s", 2, 1, 2, variant="8s")
