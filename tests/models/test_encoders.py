"""Encoder-decoder models on classification backbones: weights loading, channel adaptation, offline errors."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.constants
import pytest
import torch
import torchvision
from torch.nn import functional as F

from segpipe.errors import SegpipeError
from segpipe.models import build_model
from segpipe.models.weights import adapt_conv_weight, match_state_dict, read_state_dict
from segpipe.tasks.classification import ClassificationTask

SMALL_UNET = {"encoder": "resnet18", "decoder_channels": [16, 8, 8, 8, 8]}


@pytest.fixture(scope="module")
def torchvision_resnet18(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision ResNet-18 classifier state dict (random, seeded: no download) saved as .pth."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18_classifier.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.mark.parametrize("model", ["encoder_unet", "encoder_fcn"])
def test_logits_keep_the_input_size_of_odd_images(model: str):
    net = build_model(model, 2, 1, 3, **({"encoder": "resnet18"} if model == "encoder_fcn" else SMALL_UNET))
    assert net(torch.randn(2, 1, 37, 33)).shape == (2, 3, 37, 33)


def test_bad_dims_and_names_are_refused_with_alternatives():
    with pytest.raises(ValueError, match="spatial_dims=3"):
        build_model("encoder_unet", 3, 1, 2)
    with pytest.raises(ValueError, match="resnet34"):
        build_model("encoder_fcn", 2, 1, 2, encoder="resnet343")
    with pytest.raises(ValueError, match="unknown timm model 'resnet_nope'"):
        build_model("encoder_unet", 2, 1, 2, encoder="tu-resnet_nope")


@pytest.mark.parametrize("model", ["encoder_unet", "encoder_fcn"])
def test_classification_checkpoint_weights_land_bit_exactly_in_the_encoder(tmp_path: Path, model: str):
    torch.manual_seed(1)
    task = ClassificationTask(encoder="resnet18", in_channels=1, num_classes=4)
    with torch.no_grad():  # make running statistics non-default too
        for tensor in task.net.encoder.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor))
    ckpt = tmp_path / "classify.ckpt"
    torch.save({"state_dict": task.state_dict(), "epoch": 3}, ckpt)

    net = build_model(model, 2, 1, 3, encoder="resnet18", encoder_weights=str(ckpt))
    source = task.net.encoder.state_dict()
    loaded = net.encoder.state_dict()
    assert loaded.keys() == source.keys()
    for key, value in source.items():
        assert torch.equal(loaded[key], value), key
    report = net.weights_report
    assert len(report.matched) == len(source) and report.missing == () and report.adapted == ()
    assert sorted(report.unexpected) == ["net.head.bias", "net.head.weight"]


def test_torchvision_classifier_state_loads_and_adapts_the_first_conv(torchvision_resnet18: Path):
    state = torch.load(torchvision_resnet18, weights_only=True)
    net = build_model("encoder_unet", 2, 1, 3, **SMALL_UNET, encoder_weights=str(torchvision_resnet18))
    report = net.weights_report
    assert report.adapted == ("conv1.weight",)
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"] and report.missing == ()
    assert torch.equal(net.encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert torch.equal(net.encoder.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))


def test_timm_encoder_takes_a_timm_state_dict_under_its_model_prefix(tmp_path: Path):
    import timm

    torch.manual_seed(2)
    path = tmp_path / "timm_resnet18.pth"
    classifier = timm.create_model("resnet18", pretrained=False, num_classes=5)
    torch.save(classifier.state_dict(), path)
    net = build_model("encoder_fcn", 2, 3, 2, encoder="tu-resnet18", encoder_weights=str(path))
    assert net.weights_report.missing == ()
    assert torch.equal(net.encoder.model.layer2[0].conv1.weight, classifier.layer2[0].conv1.weight)


@pytest.mark.parametrize("channels", [1, 4])
def test_adapted_first_conv_keeps_the_pretrained_response_on_a_gray_image(torchvision_resnet18: Path, channels: int):
    rgb = build_model("encoder_unet", 2, 3, 3, **SMALL_UNET, encoder_weights=str(torchvision_resnet18)).eval()
    adapted = build_model(
        "encoder_unet", 2, channels, 3, **SMALL_UNET, encoder_weights=str(torchvision_resnet18)
    ).eval()
    gray = torch.rand(2, 1, 40, 36)
    with torch.no_grad():
        expected = rgb.encoder(gray.expand(-1, 3, -1, -1).contiguous())
        got = adapted.encoder(gray.expand(-1, channels, -1, -1).contiguous())
    first = F.conv2d(gray.expand(-1, 3, -1, -1), rgb.encoder.conv1.weight, stride=2, padding=3)
    assert torch.allclose(adapted.encoder.conv1(gray.expand(-1, channels, -1, -1)), first, atol=1e-5)
    for e, g in zip(expected[1:], got[1:], strict=True):
        assert torch.allclose(e, g, atol=1e-4, rtol=1e-4)


def test_adapt_conv_weight_values():
    weight = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)
    assert adapt_conv_weight(weight, 1).flatten().tolist() == [3.0, 12.0]
    four = adapt_conv_weight(weight, 4)
    assert four.shape == (2, 4, 1, 1) and four[1].flatten().tolist() == pytest.approx([3.0, 3.0, 3.0, 3.0])
    with pytest.raises(ValueError, match="3 input channels"):
        adapt_conv_weight(torch.zeros(2, 1, 3, 3), 4)


def test_prefix_matching_strips_and_adds_prefixes():
    source = {"module.net.encoder.a.weight": torch.zeros(2), "module.net.head.weight": torch.zeros(1)}
    target = {"model.a.weight": torch.ones(2)}
    tensors, origin, _ = match_state_dict(source, target)
    assert list(tensors) == ["model.a.weight"] and origin == {"model.a.weight": "module.net.encoder.a.weight"}


def test_weights_that_match_nothing_are_refused(tmp_path: Path):
    path = tmp_path / "other.pth"
    torch.save({"unrelated.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(SegpipeError, match=r"no tensor of .*other\.pth fits the encoder"):
        build_model("encoder_fcn", 2, 1, 2, encoder="resnet18", encoder_weights=str(path))
    with pytest.raises(SegpipeError, match="does not exist"):
        build_model("encoder_fcn", 2, 1, 2, encoder="resnet18", encoder_weights=str(tmp_path / "missing.pth"))


def test_offline_imagenet_fails_within_seconds_saying_how_to_supply_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))

    def no_network(*args: object, **kwargs: object) -> socket.socket:
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    start = time.monotonic()
    with pytest.raises(SegpipeError) as info:
        build_model("encoder_unet", 2, 1, 2, encoder="resnet18", encoder_weights="imagenet")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "no network" in message and "smp-hub/resnet18.imagenet" in message
    assert "encoder_weights: /path/to/weights.pth" in message and "\n" not in message


def test_imagenet_error_without_monkeypatching_is_quick_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """This machine cannot reach the Hub: the real probe must give up in seconds (never a download)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    from segpipe.models import hub

    if hub.hub_reachable(timeout=3):
        pytest.skip("the Hugging Face Hub is reachable here; the offline error cannot be observed")
    start = time.monotonic()
    with pytest.raises(SegpipeError, match="no network"):
        build_model("encoder_fcn", 2, 1, 2, encoder="tu-resnet18", encoder_weights="imagenet")
    assert time.monotonic() - start < 10


def test_weights_with_pickled_objects_are_refused_unread(tmp_path: Path):
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": SimpleNamespace(a=1)}, path)
    with pytest.raises(SegpipeError, match=r"cannot read encoder weights: .*pickled\.pth: refused: .*pickled Python"):
        read_state_dict(path)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(SegpipeError, match=r"cannot read encoder weights: .*truncated\.pth: not a readable torch"):
        read_state_dict(truncated)
