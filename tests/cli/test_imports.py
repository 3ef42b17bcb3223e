"""The command loads only what it runs: ``import segpipe.cli`` and ``--help`` pull in no heavy library.

Each check runs in a fresh interpreter, since this test session has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
from PIL import Image

from segpipe.io.volumes import write_volume

HEAVY = ("monai", "SimpleITK", "mlflow", "nibabel", "matplotlib")


def loaded_after(code: str) -> dict:
    """Run ``code`` in a new interpreter; it must print one JSON value, returned here."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_the_command_loads_no_imaging_or_tracking_library():
    code = f"import json, sys, segpipe.cli; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    assert loaded_after(code) == []


def test_segpipe_help_loads_no_lightning():
    code = (
        "import contextlib, io, json, sys\n"
        "from segpipe.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    code = main(['--help'])\n"
        "print(json.dumps({'code': code, 'usage': 'check-data' in out.getvalue(),\n"
        "                  'lightning': [m for m in sys.modules if m.split('.')[0] == 'lightning']}))"
    )
    assert loaded_after(code) == {"code": 0, "usage": True, "lightning": []}


@pytest.mark.parametrize("command", ["check-data", "summary", "export", "evaluate"])
def test_subcommand_help_builds_no_lightning_cli_and_loads_no_heavy_library(command: str):
    code = (
        "import contextlib, io, json, sys\n"
        "from segpipe.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        f"        main([{command!r}, '--help'])\n"
        "    except SystemExit as exit:\n"
        "        code = exit.code\n"
        f"heavy = [m for m in (*{HEAVY!r}, 'lightning') if m in sys.modules]\n"
        "print(json.dumps({'code': code, 'usage': out.getvalue().split()[:3], 'heavy': heavy}))"
    )
    assert loaded_after(code) == {"code": 0, "usage": ["usage:", "segpipe", command], "heavy": []}


def conv_model(path: Path, spatial_dims: int, metadata: dict) -> Path:
    """A one-layer ONNX network carrying segpipe ``metadata``: logits (x, 0.5 - x) of the intensity x."""
    kernel = onnx.numpy_helper.from_array(np.array([1.0, -1.0], np.float32).reshape(2, 1, *[1] * spatial_dims), "w")
    bias = onnx.numpy_helper.from_array(np.array([0.0, 0.5], np.float32), "bias")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["image", "w", "bias"], ["logits"])],
        "conv",
        [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["b", 1, *"xyz"[:spatial_dims]])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["b", 2, *"xyz"[:spatial_dims]])],
        [kernel, bias],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.helper.set_model_props(model, {"segpipe": json.dumps(metadata)})
    onnx.save(model, str(path))
    return path


# segpipe.data (its DataModules) and segpipe.inference (MaskWriter) import their Lightning exports on first
# use (PEP 562 __getattr__): the ONNX path imports these packages' plain modules only.
def test_onnx_predict_of_images_and_volumes_loads_no_lightning(tmp_path: Path):
    common = {"num_classes": 2, "in_channels": 1, "input": {"name": "image"}, "output": {"name": "logits"}}
    image_model = conv_model(tmp_path / "2d.onnx", 2, {**common, "spatial_dims": 2, "normalization": {"mode": "none"}})
    plan = {"orientation": None, "spacing": None, "normalization": "none"}
    metadata = {**common, "spatial_dims": 3, "normalization": {"mode": "none"}, "preprocessing_plan": plan}
    volume_model = conv_model(tmp_path / "3d.onnx", 3, metadata)
    (tmp_path / "images").mkdir()
    Image.fromarray(np.array([[0, 9], [7, 0]], np.uint8)).save(tmp_path / "images" / "a.png")
    volume = np.zeros((3, 2, 2), np.float32)
    volume[1] = 5.0
    write_volume(tmp_path / "v.nii.gz", volume, np.diag([2.0, 1.0, 1.5, 1.0]))
    code = (
        "import json, sys\n"
        "from segpipe.cli import main\n"
        f"codes = [main(['predict', '--onnx', {str(image_model)!r}, '--input', {str(tmp_path / 'images')!r},\n"
        f"               '--output', {str(tmp_path / 'out')!r}]),\n"
        f"         main(['predict', '--onnx', {str(volume_model)!r}, '--input', {str(tmp_path / 'v.nii.gz')!r},\n"
        f"               '--output', {str(tmp_path / 'out')!r}])]\n"
        "print(json.dumps({'codes': codes, 'lightning': [m for m in sys.modules if m.split('.')[0] == 'lightning']}))"
    )
    assert loaded_after(code) == {"codes": [0, 0], "lightning": []}
    # class 1 where the raw intensity is below 0.25
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "a.png")), [[1, 0], [0, 1]])
    written = nib.load(tmp_path / "out" / "v.nii.gz")
    np.testing.assert_array_equal(np.asarray(written.dataobj), (volume <= 0).astype(np.uint8))
    np.testing.assert_array_equal(written.affine, np.diag([2.0, 1.0, 1.5, 1.0]))
