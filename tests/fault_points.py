"""Run ``segpipe`` processes with a fault injected at an exact point (for test_fault_tolerance).

    python tests/fault_points.py <point> <segpipe arguments...>     one run, in this process
    python tests/fault_points.py --serve                             many runs, one child process each

``--serve`` reads one JSON request per line, ``{"cwd", "args", "fault", "stderr"}``, forks a child that
runs ``segpipe <args>`` there (stderr to the file, the fault installed, or none), waits for it and
answers ``{"returncode": ...}`` (negative: killed by that signal). segpipe and its libraries are
imported once, before the forks, so each run does not pay for the imports again; the children are
still separate processes that a SIGKILL ends at any point, as a user's ``segpipe fit`` would be.

Points (N and E count from 0, as Lightning's global_step and current_epoch do):
    kill-at-step:N        SIGKILL as training step N + 1 starts (N optimiser steps done)
    kill-in-validation:E  SIGKILL in the second validation batch of epoch E (after its training batches)
    kill-in-write:N       SIGKILL halfway through writing the N-th ``last.ckpt`` of this process

The hooks wrap segpipe's own functions in this process only; the package has no test code in it.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import traceback
from typing import Any

import torch

from segpipe.cli import main
from segpipe.tasks import SegmentationTask


def _kill() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _at_step(step: int) -> None:
    original = SegmentationTask.training_step

    def training_step(self: SegmentationTask, batch: Any, batch_idx: int) -> Any:
        if self.global_step == step:
            _kill()
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
        _at_step(number)
    elif name == "kill-in-validation":
        _in_validation(number)
    elif name == "kill-in-write":
        _in_write(number)
    else:
        raise SystemExit(f"unknown fault point {point!r}")


def _run_child(request: dict[str, Any]) -> int:
    with open(request["stderr"], "w") as stderr, open(os.devnull, "w") as stdout:
        os.dup2(stderr.fileno(), 2)
        os.dup2(stdout.fileno(), 1)  # the server's stdout carries the answers
    os.chdir(request["cwd"])
    if request.get("fault"):
        install(request["fault"])
    return main(request["args"])


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _run_child(request)
            except SystemExit as err:
                code = err.code if isinstance(err.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve()
    else:
        install(sys.argv[1])
        sys.exit(main(sys.argv[2:]))
