"""Errors that segpipe reports to the user as one line, without a traceback."""

from __future__ import annotations

from pathlib import Path


class SegpipeError(Exception):
    """A problem with the user's input or configuration; the CLI prints it and exits with code 2."""


class DataError(SegpipeError):
    """A file or folder that cannot be used, with the reason."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ExportError(SegpipeError):
    """A checkpoint, option or architecture that ``segpipe export`` cannot turn into a deployable file."""
