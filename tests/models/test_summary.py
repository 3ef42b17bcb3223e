"""Model summary: the lecture's worked examples and counting rules (the command: tests/cli/test_summary.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from segpipe.models import UNet
from segpipe.models.summary import (
    FUNCTIONAL,
    parse_input_shape,
    precision_bytes,
    render,
    summarize,
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # Rich folds long cells at the default 80 columns


def test_lecture_single_conv_params_and_macs():
    # 3x32x32 input, 10 filters 5x5, stride 1, pad 2 -> 760 parameters, 768,000 multiply-adds
    summary = summarize(nn.Conv2d(3, 10, 5, stride=1, padding=2), (1, 3, 32, 32))
    assert summary.params == 760
    assert summary.macs == 768_000
    assert summary.layers[0].output_shape == (1, 10, 32, 32)
    assert summary.activations == 10 * 32 * 32


def test_lecture_two_convs_memory():
    # 4x1x512x512, conv 64 3x3 then conv 128 3x3, no bias, pad 1
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = nn.Sequential(nn.Conv2d(1, 64, 3, padding=1, bias=False), nn.Conv2d(64, 128, 3, padding=1, bias=False))
    summary = summarize(model, (4, 1, 512, 512))
    assert summary.params == 74_304
    assert summary.activations == 4 * 512 * 512 * (64 + 128) == 201_326_592
    assert summary.output_bytes == 805_306_368  # 768 MiB, the lecture's "about 770 MB"
    # the lecture's 202M also counts the 1M input values: 1M + 67M + 134M
    assert summary.forward_values == 202_375_168
    assert summary.activation_bytes == 4 * 202_375_168
    assert round(summary.activation_bytes / 2**20) == 772
    assert summary.macs_per_sample * 4 == summary.macs == 4 * 512 * 512 * (64 * 9 + 128 * 64 * 9)


def test_lecture_vgg16():
    with torch.device("meta"):
        model = torchvision.models.vgg16(weights=None)
    summary = summarize(model, (1, 3, 224, 224))
    assert summary.params == 138_357_544
    # lecture table: input 150,528 + conv 13,547,520 + pool 1,530,368 + fc 9,192 = 15,237,608 values;
    # torchvision adds a 7x7 adaptive avg-pool (25,088). In-place ReLU outputs are not new memory.
    convs = sum(layer.activations for layer in summary.layers if layer.type == "Conv2d")
    pools = sum(layer.activations for layer in summary.layers if layer.type == "MaxPool2d")
    fcs = sum(layer.activations for layer in summary.layers if layer.type == "Linear")
    assert (summary.input_values, convs, pools, fcs) == (150_528, 13_547_520, 1_530_368, 9_192)
    assert summary.forward_values == 15_237_608 + 25_088
    assert all(layer.inplace and layer.activations == 0 for layer in summary.layers if layer.type == "ReLU")
    # The lecture's "24M values, 93 MB" does not follow from its own table (cs231n.github.io#88);
    # counting every in-place ReLU output as a separate tensor overshoots it.
    everything = summarize(model, (1, 3, 224, 224), include_inplace=True)
    assert 15e6 < summary.forward_values < 24e6 < everything.forward_values < 29e6
    assert abs(summary.macs - 15.47e9) / 15.47e9 < 0.01


def test_mac_rules_for_transposed_conv_and_linear():
    up = summarize(nn.ConvTranspose2d(4, 2, kernel_size=2, stride=2), (3, 4, 5, 6))
    assert up.macs == 3 * 4 * 5 * 6 * 2 * 2 * 2  # input elements x out_ch x prod(kernel)
    assert up.layers[0].output_shape == (3, 2, 10, 12)
    linear = summarize(nn.Linear(10, 5), (3, 10))
    assert linear.macs == 3 * 10 * 5
    grouped = summarize(nn.Conv3d(4, 8, 3, padding=1, groups=2), (2, 4, 5, 5, 5))
    assert grouped.macs == 2 * 8 * 125 * (4 // 2) * 27


def test_norm_and_activation_have_no_macs_and_inplace_is_not_counted():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(inplace=True), nn.ReLU())
    summary = summarize(model, (1, 1, 6, 6))
    by_type = {layer.type: layer for layer in summary.layers}
    assert by_type["BatchNorm2d"].macs == 0 and by_type["BatchNorm2d"].activations == 2 * 16
    assert summary.layers[2].inplace and summary.layers[2].activations == 0
    assert summary.layers[3].activations == 2 * 16  # out-of-place ReLU allocates
    assert model.training  # mode restored


def test_functional_ops_between_modules_are_counted():
    model = UNet(2, 1, 2, depth=2, base_channels=4)
    summary = summarize(model, (1, 1, 32, 32))
    functional = [layer for layer in summary.layers if layer.name == FUNCTIONAL]
    assert len(functional) == 1
    # two skip concatenations: (4 + 4) x 32^2 and (8 + 8) x 16^2
    assert functional[0].activations == 8 * 32 * 32 + 16 * 16 * 16


def test_pooling_indices_are_counted_in_bytes():
    from segpipe.models import SegNet

    summary = summarize(SegNet(2, 1, 2, base_channels=2, stage_convs=(1,)), (1, 1, 8, 8))
    pool = next(layer for layer in summary.layers if layer.type == "MaxPool2d")
    assert pool.activations == 2 * 16 and pool.extra_bytes == 2 * 16 * 8  # int64 indices


def test_precision_and_training_estimate():
    model = nn.Conv2d(1, 8, 3, padding=1)
    full = summarize(model, (2, 1, 16, 16), precision="32")
    half = summarize(model, (2, 1, 16, 16), precision="16-mixed")
    assert half.activation_bytes * 2 == full.activation_bytes
    params = 80
    assert full.training_bytes_estimate == full.activation_bytes + 4 * params * 4
    assert half.training_bytes_estimate == half.activation_bytes + 4 * params * 4  # fp32 master weights
    assert precision_bytes("bf16-true") == (2, 2)
    with pytest.raises(ValueError, match="'8'"):
        precision_bytes("8")


def test_render_prints_a_table(capsys):
    render(summarize(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True)), (1, 1, 8, 8)))
    out = capsys.readouterr().out
    assert "Conv2d" in out and "in-place" in out and "Training estimate" in out


def test_parse_input_shape():
    assert parse_input_shape("4x1x512x512") == (4, 1, 512, 512)
    assert parse_input_shape("2,1,16,16,16") == (2, 1, 16, 16, 16)
    for bad in ("4x1", "4xAx5x5", "0x1x5x5"):
        with pytest.raises(ValueError, match="--input"):
            parse_input_shape(bad)


def test_benchmark_record_appends_under_its_heading(tmp_path):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "summary_memory.py"
    spec = importlib.util.spec_from_file_location("summary_memory", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    doc = tmp_path / "docs" / "benchmarks.md"
    module.record(doc, "| row 1 |")
    doc.write_text(doc.read_text() + "\n## Other section\n\nkept as is\n")
    module.record(doc, "| row 2 |")
    text = doc.read_text()
    assert text.count(module.HEADING) == 1
    assert text.index("| row 1 |") < text.index("| row 2 |") < text.index("## Other section")
    assert text.endswith("## Other section\n\nkept as is\n")
