"""What every benchmark script shares: a description of the machine and appending a row to docs/benchmarks.md."""

from __future__ import annotations

import platform
import shlex
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what ``platform`` knows)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_description(device: torch.device | None = None) -> str:
    """``<CPU>, <n> threads, torch <version>`` and the GPU's name when ``device`` is a CUDA device."""
    text = f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if device is not None and device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text


def command_line() -> str:
    """The command that ran this script, as a user would type it with uv."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    return " ".join(["uv run python", str(shown), *map(shlex.quote, sys.argv[1:])])


def append_row(heading: str, table_header: str, row: str, intro: str = "", doc: Path = DOC) -> None:
    """Append ``row`` to the table under ``heading`` in ``doc``; the section (``intro`` + table) is created first
    if missing. Other sections are left untouched.
    """
    doc.parent.mkdir(parents=True, exist_ok=True)
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        text = text if text.endswith("\n") else text + "\n"
        intro = f"{intro.strip()}\n\n" if intro else ""
        doc.write_text(f"{text}\n{heading}\n\n{intro}{table_header.rstrip()}\n{row}\n")
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    table_lines = [i for i in range(start, end) if lines[i].startswith("|")]
    if not table_lines:
        insert = end
        while insert > start + 1 and not lines[insert - 1].strip():
            insert -= 1
        lines[insert:insert] = ["\n", table_header.rstrip() + "\n", row + "\n"]
    else:
        lines.insert(table_lines[-1] + 1, row + "\n")
    doc.write_text("".join(lines))


def publish(heading: str, table_header: str, rows: list[str], intro: str = "", record: bool = True) -> None:
    """Print the table of ``rows`` and, with ``record``, append them under ``heading`` (see :func:`append_row`)."""
    print(table_header + "\n".join(rows))
    if record:
        for row in rows:
            append_row(heading, table_header, row, intro)


def resolved_config(path: Path) -> dict:
    """The config at ``path`` as ``segpipe fit`` resolves it (composition, defaults), as plain dicts."""
    from segpipe.config import read_config

    return read_config(["--config", str(path)]).as_dict()
