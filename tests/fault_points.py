"""Run ``segpipe`` with a fault injected at an exact point (test_fault_tolerance starts it as a subprocess).

    python tests/fault_points.py <point> <segpipe arguments...>

Points (N and E count from 0, as Lightning's global_step and current_epoch do):
    kill-at-step:N        SIGKILL as training step N + 1 starts (N optimiser steps done)
    kill-in-validation:E  SIGKILL in the second validation batch of epoch E (after its training batches)
    kill-in-write:N       SIGKILL halfway through writing the N-th ``last.ckpt`` of this process
    term-at-step:N        send SIGTERM to this process as training step N + 1 starts

The hooks wrap segpipe's own functions in this process only; the package has no test code in it.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from typing import Any

import torch

from segpipe.cli import main
from segpipe.tasks import SegmentationTask


def _kill() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _at_step(step: int, action: Any) -> None:
    original = SegmentationTask.training_step
    fired = []

    def training_step(self: SegmentationTask, batch: Any, batch_idx: int) -> Any:
        if self.global_step == step and not fired:
            fired.append(True)
            action()
        return original(self, batch, batch_idx)

    SegmentationTask.training_step = training_step


def _in_validation(epoch: int) -> None:
    original = SegmentationTask.validation_step

    def validation_step(self: SegmentationTask, batch: Any, batch_idx: int) -> Any:
        if not self.trainer.sanity_checking and self.current_epoch == epoch and batch_idx == 1:
            _kill()
        return original(self, batch, batch_idx)

    SegmentationTask.validation_step = validation_step


def _in_write(nth: int) -> None:
    real_save = torch.save
    seen = []

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(f, str | os.PathLike) and "last.ckpt" in os.fspath(f):
            seen.append(f)
            if len(seen) == nth:
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                data = buffer.getvalue()
                with open(f, "wb") as out:  # half of the file, on disk, then the kill
                    out.write(data[: len(data) // 2])
                    out.flush()
                    os.fsync(out.fileno())
                _kill()
        real_save(obj, f, *args, **kwargs)

    torch.save = save


def install(point: str) -> None:
    name, _, value = point.partition(":")
    number = int(value)
    if name == "kill-at-step":
        _at_step(number, _kill)
    elif name == "term-at-step":
        _at_step(number, lambda: os.kill(os.getpid(), signal.SIGTERM))
    elif name == "kill-in-validation":
        _in_validation(number)
    elif name == "kill-in-write":
        _in_write(number)
    else:
        raise SystemExit(f"unknown fault point {point!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
