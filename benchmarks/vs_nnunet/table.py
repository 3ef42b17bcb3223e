"""Scoring held-out predictions with segpipe's evaluation code, and the comparison table (JSON, Markdown)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from segpipe.evaluation.case_metrics import Rows
from segpipe.evaluation.folder import score_folder

TOOLS = ("nnunet", "segpipe")
STAGES = ("plan_s", "train_s", "predict_s")


def mean_foreground_dice(rows: Rows) -> tuple[float, dict[str, float]]:
    """The mean Dice over foreground classes of each class's mean over cases, and those class means.

    ``rows`` are :func:`segpipe.evaluation.case_metrics.case_metrics` rows (one per case and foreground
    class); a case where both prediction and reference lack a class has NaN Dice and is left out of that
    class's mean, as in ``segpipe evaluate``'s summary (nnU-Net's convention).

    Raises:
        ValueError: when no row has a Dice value.
    """
    per_class: dict[str, list[float]] = {}
    for row in rows:
        dice = float(row["dice"])
        if not math.isnan(dice):
            per_class.setdefault(str(row["class"]), []).append(dice)
    if not per_class:
        raise ValueError("no case has a scored foreground class")
    means = {name: sum(values) / len(values) for name, values in per_class.items()}
    return sum(means.values()) / len(means), means


def score(predictions: Path, labels: Path, class_names: Sequence[str]) -> dict[str, object]:
    """``dice`` (mean foreground Dice), ``dice_per_class`` and ``cases`` of a folder of predictions, scored by
    ``segpipe evaluate``'s code (pairing by case name, geometry checked against the labels).

    Raises:
        DataError: for unpaired files or a prediction off its label's grid.
    """
    rows = score_folder(predictions, labels, class_names)
    dice, per_class = mean_foreground_dice(rows)
    return {"dice": dice, "dice_per_class": per_class, "cases": len({row["case"] for row in rows})}


def table_rows(results: Mapping[str, Mapping[str, Mapping[str, object] | None]]) -> list[dict[str, object]]:
    """One row per set from ``results[set][tool]`` (None: not run): the budget, each tool's Dice, stage
    times and the higher of the machine's 1-minute load averages before and after its run, and
    ``segpipe_minus_nnunet`` (None unless both ran)."""
    rows = []
    for set_name, by_tool in results.items():
        row: dict[str, object] = {"set": set_name}
        for tool in TOOLS:
            result = by_tool.get(tool)
            row.setdefault("budget_s", result.get("budget_s") if result else None)
            row[f"{tool}_dice"] = result["dice"] if result else None
            for stage in STAGES:
                row[f"{tool}_{stage}"] = result[stage] if result else None
            loads = result.get("load_1min") if result else None
            row[f"{tool}_load"] = max(loads) if loads else None  # type: ignore[arg-type]
        both = row["nnunet_dice"] is not None and row["segpipe_dice"] is not None
        row["segpipe_minus_nnunet"] = float(row["segpipe_dice"]) - float(row["nnunet_dice"]) if both else None  # type: ignore[arg-type]
        rows.append(row)
    return rows


def _cell(value: object, digits: int) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"  # type: ignore[arg-type]


def markdown_table(rows: Sequence[Mapping[str, object]]) -> str:
    """The table as Markdown: Dice to 4 places, times in seconds as plan / train / predict, loads to 0.1."""
    header = (
        "| set | budget (s) | nnU-Net Dice | segpipe Dice | segpipe - nnU-Net "
        "| nnU-Net plan / train / predict (s) | segpipe plan / train / predict (s) | load nnU-Net / segpipe |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    lines = []
    for row in rows:
        times = {tool: " / ".join(_cell(row[f"{tool}_{stage}"], 0) for stage in STAGES) for tool in TOOLS}
        cells = [str(row["set"]), _cell(row["budget_s"], 0), _cell(row["nnunet_dice"], 4)]
        cells += [_cell(row["segpipe_dice"], 4), _cell(row["segpipe_minus_nnunet"], 4), times["nnunet"]]
        cells += [times["segpipe"], " / ".join(_cell(row[f"{tool}_load"], 1) for tool in TOOLS)]
        lines.append("| " + " | ".join(cells) + " |")
    return header + "\n".join(lines) + "\n"
