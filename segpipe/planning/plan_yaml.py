"""A plan as a YAML config that ``segpipe fit --config`` runs as is, each decision's reason beside its key.

PyYAML drops comments, so the file is written key by key: mappings as blocks, leaves (scalars and lists of
scalars) in flow style on their key's line with the reason as a ``# comment``; lists of mappings (callbacks,
transforms) as PyYAML's block under their commented key. A header block summarises the dataset's
fingerprint. The result parses back to the same data (``yaml.safe_load``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from segpipe.errors import DataError
from segpipe.io.atomic import write_text

if TYPE_CHECKING:
    from segpipe.planning.planner import ExperimentPlan

INDENT = "  "
SUMMARY_WIDTH = 100  # longest fingerprint value shown in the header; longer ones stay in fingerprint.json


def write_plan(plan: ExperimentPlan, path: str | Path) -> Path:
    """Write ``plan.config`` to ``path`` (atomically) with ``plan.reasons`` as comments and a fingerprint header.

    A reason whose key is not in the config (a decision to leave something at its default) is listed after
    the header.
    """
    used: set[str] = set()
    body = config_lines(plan.config, plan.reasons, used)
    unplaced = [f"#   {key}: {reason}" for key, reason in plan.reasons.items() if key not in used]
    defaults = ["# Decisions about keys the config leaves at their defaults:", *unplaced, ""] if unplaced else []
    lines = [*header_lines(plan.fingerprint.to_dict(), path), *defaults, *body]
    return write_text(path, "\n".join(lines) + "\n")


def read_plan(path: str | Path) -> dict[str, Any]:
    """The config of a plan file (comments dropped).

    Raises:
        DataError: a missing file, or one that is not a YAML mapping.
    """
    try:
        content = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise DataError(path, f"cannot read the plan ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise DataError(path, f"not YAML: {' '.join(str(err).split())}") from None
    if not isinstance(content, dict):
        raise DataError(path, f"a plan is a YAML mapping of config keys, not {type(content).__name__}")
    return content


def header_lines(fingerprint: Mapping[str, Any], path: str | Path) -> list[str]:
    """The comment block that opens a plan: how to run it and the fingerprint's summary."""
    lines = [
        "# segpipe plan: a complete `segpipe fit` config; each decision's reason is the comment beside it.",
        f"# segpipe fit --config {Path(path).name}",
        "# Dataset fingerprint:",
    ]
    lines += [f"#   {key}: {value}" for key, value in fingerprint_summary(fingerprint).items()]
    return [*lines, ""]


def fingerprint_summary(fingerprint: Mapping[str, Any]) -> dict[str, str]:
    """One line per fact of a fingerprint (``DatasetFingerprint.to_dict()``): case count, median shape and
    spacing, modality, class frequencies, then its other short values; per-case lists stay in fingerprint.json."""
    summary: dict[str, str] = {}
    if fingerprint.get("case_names") is not None:
        summary["cases"] = str(len(fingerprint["case_names"]))
    for key, name in (("shapes", "median shape"), ("spacings", "median spacing")):
        if fingerprint.get(key):
            summary[name] = json.dumps([round(float(v), 3) for v in np.median(fingerprint[key], axis=0)])
    names, fractions = fingerprint.get("class_names"), fingerprint.get("class_fraction")
    if names and fractions:
        summary["class frequencies"] = ", ".join(f"{n} {f:.4f}" for n, f in zip(names, fractions, strict=False))
    derived = {"case_names", "shapes", "spacings", "class_names", "class_fraction"}
    for key, value in fingerprint.items():
        text = json.dumps(value, default=str)
        if key not in derived and len(text) <= SUMMARY_WIDTH:
            summary[key] = text
    return summary


def config_lines(config: Mapping[str, Any], reasons: Mapping[str, str], used: set[str], prefix: str = "") -> list[str]:
    """YAML lines of ``config`` with the reason of each dotted key (``prefix`` + key) as a comment; the keys
    that got their comment are added to ``used``."""
    lines: list[str] = []
    depth = prefix.count(".")
    indent = INDENT * depth
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        comment = f"  # {reasons[dotted]}" if dotted in reasons else ""
        if dotted in reasons:
            used.add(dotted)
        name = _scalar(key)
        if isinstance(value, Mapping) and value:
            lines.append(f"{indent}{name}:{comment}")
            lines += config_lines(value, reasons, used, f"{dotted}.")
        elif isinstance(value, list) and any(isinstance(item, Mapping | list) for item in value):
            lines.append(f"{indent}{name}:{comment}")
            block = yaml.safe_dump(value, sort_keys=False, default_flow_style=False, width=math.inf)
            lines += [f"{indent}{INDENT}{line}" for line in block.splitlines()]
        else:
            lines.append(f"{indent}{name}: {_scalar(value)}{comment}")
    return lines


def _scalar(value: Any) -> str:
    """``value`` as one line of YAML flow style (a scalar, a list of scalars, an empty mapping)."""
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("\n...\n").strip()
