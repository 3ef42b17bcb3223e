"""Checkpoint files: written atomically and durably, read without unpickling code; output folders probed.

``AtomicCheckpointIO`` is the Trainer's CheckpointIO plugin in ``segpipe`` runs. A ``last.ckpt`` is
either the previous complete file or the new complete file, whatever moment the process is killed at;
loading accepts tensors and plain containers only (``torch.load(weights_only=True)``), which is all a
Lightning checkpoint of a segpipe task holds, so no extra globals are allowlisted.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH

from segpipe.errors import CheckpointError, SegpipeError
from segpipe.io.atomic import atomic_path, remove_stale_temporaries

LAST = "last"  # the --ckpt_path value that resumes the most recent run (segpipe.tracking.resume)


def _is_remote(path: _PATH) -> bool:
    return "://" in str(path)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _os_problem(err: OSError) -> str:
    name = errno.errorcode.get(err.errno, "") if err.errno else ""
    reason = err.strerror or _first_line(err)
    return f"{reason} ({name})" if name else reason


def unsafe_globals(path: str | Path) -> list[str]:
    """The Python globals a checkpoint's pickle would import beyond torch's ``weights_only`` allowlist.

    Reads only the pickle inside the archive (no tensors, nothing executed).

    Raises:
        CheckpointError: if the file is missing or not a readable torch checkpoint (truncated, corrupt).
    """
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"checkpoint not found: {file}")
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(file))
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as err:
        raise CheckpointError(
            f"{file}: not a readable torch checkpoint, truncated or corrupt ({_first_line(err)})"
        ) from None


def check_checkpoint(path: str | Path) -> None:
    """Refuse a local checkpoint that would run code when unpickled, before anything loads it.

    Lightning's special names (``last``, ``best``, ``hpc``) and remote URLs are left to Lightning.

    Raises:
        CheckpointError: the file is missing, unreadable, or names globals outside the allowlist.
    """
    if str(path) in (LAST, "best", "hpc") or _is_remote(path):
        return
    found = unsafe_globals(path)
    if found:
        raise CheckpointError(_unsafe_message(path, found))


def _unsafe_message(path: _PATH, found: list[str]) -> str:
    return (
        f"{path}: refused: the checkpoint holds pickled Python objects ({', '.join(found[:3])}) whose loading could "
        "run code; segpipe loads only tensors and plain data (torch.load weights_only=True)"
    )


def safe_load(path: _PATH, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with one-line errors.

    Raises:
        CheckpointError: missing, unreadable, not a dict, or holding objects that need unpickling code.
    """
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.findall(r"GLOBAL ([\w.]+)", str(err))
        if found:
            raise CheckpointError(_unsafe_message(path, found)) from None
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({_first_line(err)})") from None
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint, truncated or corrupt ({_first_line(err)})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, found a {type(checkpoint).__name__}")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints atomically and durably; load them with ``weights_only=True``.

    A save goes through :func:`segpipe.io.atomic.atomic_path` with ``fsync``: a temporary file in the
    target's folder, flushed and fsync'ed, renamed over the target with ``os.replace`` (atomic on POSIX
    within one file system), and the folder fsync'ed so the rename survives a power loss. A kill mid-write
    leaves the previous file intact and a hidden ``.<name>.<random>.tmp.ckpt`` that the next save of that
    name removes.

    Lightning's own ``_atomic_save`` (TorchCheckpointIO) is not enough: for local paths it writes through an
    fsspec transaction whose temporary file is made by ``tempfile.mkstemp()`` in the system temp folder,
    so the commit is a ``shutil.move`` that becomes a non-atomic copy when /tmp is another file system
    (the common case for ``outputs/`` on a data disk), nothing is fsync'ed, and a killed write leaves its
    temporary file in /tmp. Remote URLs (``s3://`` ...) still go through Lightning's fsspec path.

    Raises (from ``save_checkpoint``/``load_checkpoint``):
        CheckpointError: the disk is full or the folder not writable (the previous file is kept), or a
            checkpoint cannot be read safely.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if _is_remote(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        target = Path(path)
        try:
            remove_stale_temporaries(target)
            with atomic_path(target, fsync=True) as tmp:
                torch.save(checkpoint, tmp)
        except OSError as err:
            kept = " (the previous checkpoint is kept)" if target.is_file() else ""
            raise CheckpointError(f"cannot write checkpoint {target}: {_os_problem(err)}{kept}") from None

    def load_checkpoint(self, path: _PATH, map_location: Any = None, weights_only: bool | None = None) -> dict:
        # weights_only is forced: Lightning passes None, which torch reads as True only by default (an
        # environment variable can flip it); a segpipe checkpoint never needs more.
        if _is_remote(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return safe_load(path, map_location=map_location or (lambda storage, loc: storage))


def with_atomic_checkpoint_io(plugins: Any) -> list[Any]:
    """The Trainer's ``plugins`` with :class:`AtomicCheckpointIO` added unless a CheckpointIO is configured."""
    found = [] if plugins is None else list(plugins) if isinstance(plugins, list | tuple) else [plugins]
    if not any(isinstance(plugin, CheckpointIO) for plugin in found):
        found.append(AtomicCheckpointIO())
    return found


def check_writable(folder: str | Path) -> None:
    """Create ``folder`` if needed and write (then remove) a probe file in it.

    Raises:
        SegpipeError: the folder cannot be created or written (read-only, a file in the way, disk full).
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(b"segpipe")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        raise SegpipeError(f"{path}: the output folder is not writable: {_os_problem(err)}") from None
