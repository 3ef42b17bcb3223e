"""Errors that segpipe reports to the user as one line, without a traceback."""

from __future__ import annotations

from pathlib import Path


class SegpipeError(Exception):
    """A problem with the user's input or configuration; the CLI prints it and exits with ``exit_code`` (2)."""

    exit_code = 2


class DataError(SegpipeError):
    """A file or folder that cannot be used, with the reason."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ExportError(SegpipeError):
    """A checkpoint, option or architecture that ``segpipe export`` cannot turn into a deployable file."""


class CheckpointError(SegpipeError):
    """A checkpoint that cannot be read safely, or one that cannot be written (the previous file is kept)."""


class NonFiniteLossError(SegpipeError):
    """Training stopped on a NaN/Inf loss before the optimiser step, so no checkpoint holds the bad model (exit 3)."""

    exit_code = 3


class TrainingInterrupted(SegpipeError):
    """Training stopped by SIGTERM/SIGINT after a last checkpoint was written; exit code 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
