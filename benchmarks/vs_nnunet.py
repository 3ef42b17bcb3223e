"""segpipe's zero-config plan against nnU-Net v2's, at the same wall-clock budget, on sets built from nilearn's
MNI152 template (no download), scored on the same held-out cases by the same Dice code.

    uv run python benchmarks/vs_nnunet.py [--budget 3m] [--sets mni2d,mni3d,brainmask,mni3d_aniso]
                                          [--tool nnunet|segpipe|both] [--work DIR]

For each set: the dataset is written once in nnU-Net's raw layout under ``<work>/nnUNet_raw`` (both tools read
those files); nnU-Net v2 (``nnunetv2`` from PyPI, installed into ``<work>/nnunet-env``) runs its planner
(``nnUNetv2_plan_and_preprocess --verify_dataset_integrity``), a trainer that stops at the budget, and
``nnUNetv2_predict``; segpipe runs ``segpipe plan --time-budget``, ``segpipe fit`` and ``segpipe predict``. The
held-out predictions of both are scored by ``segpipe evaluate``'s code (mean over foreground classes of the
per-class mean Dice over cases). Each (set, tool) result is cached as JSON under ``<work>/results``, so that
``--tool segpipe`` later completes a table that ``--tool nnunet`` started; the table is printed and written as
``<work>/vs_nnunet.json`` and ``.md``. The script lowers its priority (nice 10) and its children inherit it.
What each wall time includes: ``benchmarks/vs_nnunet/nnunet.py``, ``segpipe_side.py`` and the trainer's
docstring (``nnUNetTrainerBudget.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, command_line, machine_description
from vs_nnunet.datasets import SETS, ensure_dataset
from vs_nnunet.nnunet import run_nnunet
from vs_nnunet.runs import load_result, save_result
from vs_nnunet.segpipe_side import run_segpipe
from vs_nnunet.table import TOOLS, markdown_table, score, table_rows

from segpipe.errors import SegpipeError
from segpipe.io.atomic import write_text
from segpipe.planning.budget import parse_duration

DEFAULT_SETS = "mni2d,mni3d,brainmask,mni3d_aniso"
NICENESS = 10


def run_tool(tool: str, work: Path, set_name: str, budget: str) -> dict[str, object]:
    """Run ``tool`` on ``set_name``, score its held-out predictions and cache the result."""
    spec = SETS[set_name]
    predictions = work / "predictions" / f"{set_name}_{tool}"
    load_before = os.getloadavg()[0]
    if tool == "nnunet":
        times = run_nnunet(work, spec, parse_duration(budget), predictions)
    else:
        times = run_segpipe(work, spec, budget, predictions)
    labels = work / "nnUNet_raw" / spec.folder_name / "labelsTs"
    result = {
        "set": set_name,
        "tool": tool,
        "budget_s": parse_duration(budget),
        **score(predictions, labels, spec.class_names),
        **times,
        # The machine may be shared: the 1-minute load average before and after says how much it was.
        "load_1min": [load_before, os.getloadavg()[0]],
        "machine": machine_description(),
        "date": dt.date.today().isoformat(),
        "command": command_line(),
    }
    save_result(work, set_name, tool, result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="3m", help="wall-clock training budget per tool and set (3m)")
    parser.add_argument("--sets", default=DEFAULT_SETS, help=f"comma-separated sets ({DEFAULT_SETS})")
    parser.add_argument("--tool", choices=(*TOOLS, "both"), default="both")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "vs_nnunet", help="work folder")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.sets.split(",") if name.strip()]
    unknown = [name for name in names if name not in SETS]
    if unknown:
        parser.error(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(SETS)}")
    parse_duration(args.budget)
    os.nice(max(0, NICENESS - os.nice(0)))
    work = args.work.resolve()
    tools = TOOLS if args.tool == "both" else (args.tool,)
    for name in names:
        ensure_dataset(work / "nnUNet_raw", name)
        for tool in tools:
            print(f"{name}: {tool} ...", flush=True)
            result = run_tool(tool, work, name, args.budget)
            print(f"{name}: {tool} Dice {result['dice']:.4f} {json.dumps(result['dice_per_class'])}", flush=True)
    rows = table_rows({name: {tool: load_result(work, name, tool) for tool in TOOLS} for name in names})
    text = markdown_table(rows)
    write_text(work / "vs_nnunet.md", f"{machine_description()}, {dt.date.today().isoformat()}\n\n{text}")
    write_text(work / "vs_nnunet.json", json.dumps(rows, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SegpipeError as err:
        print(f"vs_nnunet: error: {err}", file=sys.stderr)
        sys.exit(2)
