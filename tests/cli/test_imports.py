"""The command loads only what it runs: ``import segpipe.cli`` and ``--help`` pull in no heavy library.

Each check runs in a fresh interpreter, since this test session has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
