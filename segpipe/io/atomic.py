"""One way to write a file so that readers never see it half-written: a temporary name beside the target,
then ``os.replace`` (atomic on POSIX within one file system). A failed write leaves the old file untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


def full_suffix(path: Path) -> str:
    """``.nii.gz`` for ``a.nii.gz``, ``.png`` for ``a.png``: writers that pick the format by suffix need it whole."""
    suffixes = path.suffixes
    if len(suffixes) >= 2 and suffixes[-1] == ".gz":
        return "".join(suffixes[-2:])
    return path.suffix


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix) to write to; on success it replaces ``path``.

    Args:
        path: the file to write; its folder is created.
        fsync: flush the file and its folder to disk before and after the rename (checkpoints).

    On an exception inside the block the temporary file is removed and ``path`` is unchanged.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(_temporary_name(target, f"{os.getpid()}-{secrets.token_hex(4)}"))
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, target)
        if fsync:
            fsync_folder(target.parent)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _temporary_name(target: Path, tag: str) -> str:
    return f".{target.name}.{tag}.tmp{full_suffix(target)}"


def remove_stale_temporaries(path: str | Path) -> None:
    """Remove the temporary files that killed writes of ``path`` (by :func:`atomic_path`) left beside it.

    Only for targets that one process writes at a time (a rank-zero checkpoint): a concurrent writer's
    temporary file would be removed too.
    """
    target = Path(path)
    for stale in target.parent.glob(_temporary_name(target, "*")):
        stale.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def publish_folder(tmp: Path, target: Path) -> bool:
    """Rename a finished folder ``tmp`` to ``target``; False (and ``tmp`` removed) when another process won."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(target)
        return True
    except OSError:
        # Another process (a second DDP rank) finished first; its copy is identical.
        shutil.rmtree(tmp, ignore_errors=True)
        return False


def fsync_file(path: str | Path) -> None:
    """Flush ``path``'s data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: str | Path) -> None:
    """Flush ``folder``'s entries (a rename into it) to disk; a no-op where the file system cannot."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems cannot fsync a folder; the data itself is on disk
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)
