"""The per-case report on disk and on the console: ``test_cases.csv``, ``test_summary.csv`` and a Rich table.

Rows come from :mod:`segpipe.evaluation.case_metrics`; this module only writes and shows them.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from segpipe.evaluation.case_metrics import (
    SUMMARY_COLUMNS,
    Rows,
    case_columns,
    has_surface_dice,
    summarize_cases,
    unit_of,
)
from segpipe.io.atomic import write_text

CASES_FILE = "test_cases.csv"
SUMMARY_FILE = "test_summary.csv"


@dataclass(frozen=True)
class CaseReport:
    """The written report: per-case rows, their per-class summary, the two CSV files and the distance unit."""

    rows: Rows
    summary: Rows
    cases_csv: Path
    summary_csv: Path
    unit: str


def write_report(folder: Path, rows: Rows, prefix: str = "test") -> CaseReport:
    """Summarise ``rows`` and write ``<prefix>_cases.csv`` and ``<prefix>_summary.csv`` into ``folder``
    (``test_cases.csv`` and ``test_summary.csv`` by default).

    Raises:
        ValueError: when the rows mix distance units (:func:`~segpipe.evaluation.case_metrics.unit_of`).
    """
    unit = unit_of(rows)
    summary = summarize_cases(rows)
    cases_csv = write_csv(folder / f"{prefix}_cases.csv", rows, case_columns(unit, has_surface_dice(rows)))
    summary_csv = write_csv(folder / f"{prefix}_summary.csv", summary, SUMMARY_COLUMNS)
    return CaseReport(rows, summary, cases_csv, summary_csv, unit)


def write_csv(path: Path, rows: Sequence[dict[str, str | float]], columns: Sequence[str]) -> Path:
    """Write ``rows`` with a header, atomically; floats with 6 significant digits, NaN as an empty cell."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(columns))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return write_text(path, text.getvalue())


def _cell(value: str | float) -> str | float:
    if not isinstance(value, float):
        return value
    return "" if math.isnan(value) else f"{value:.6g}"


def summary_table(summary: Sequence[dict[str, str | float]], title: str = "Test metrics per class") -> Table:
    """A Rich table: one row per class, ``mean ± std (median) n=...`` per metric, NaN cases excluded."""
    table = Table(title=title, caption="mean ± std (median) n=scored cases; empty classes (NaN) excluded")
    table.add_column("class")
    metrics = list(dict.fromkeys(str(s["metric"]) for s in summary))
    for metric in metrics:
        table.add_column(metric, justify="right")
    classes = list(dict.fromkeys(str(s["class"]) for s in summary))
    for name in classes:
        cells = []
        for metric in metrics:
            s = next(x for x in summary if x["class"] == name and x["metric"] == metric)
            if s["n"] == 0:
                cells.append("n/a n=0")
            else:
                cells.append(f"{s['mean']:.4f} ± {s['std']:.4f} ({s['median']:.4f}) n={s['n']}")
        table.add_row(name, *cells)
    return table


def print_summary(
    summary: Sequence[dict[str, str | float]], console: Console | None = None, title: str = "Test metrics per class"
) -> None:
    """Print :func:`summary_table` of ``summary`` to ``console`` (stdout by default)."""
    (console or Console()).print(summary_table(summary, title))
