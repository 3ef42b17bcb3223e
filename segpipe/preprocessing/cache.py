"""On-disk cache of preprocessed volumes: one uncompressed ``.npz`` per case, reused across epochs and runs.

Layout::

    <cache_dir>/<signature hash>/signature.json          the preprocessing settings it was built with
    <cache_dir>/<signature hash>/<case>-<paths hash>.npz  the whole preprocessed item of one case
    <cache_dir>/<signature hash>/locks/<entry>.lock      one writer per entry

An entry is used only when its preprocessing signature (a hash of the settings that change the output,
plus :data:`CACHE_FORMAT_VERSION`) and its source files (resolved path, size, ``mtime_ns``) match;
otherwise it is rebuilt. Entries are written under a temporary name in the same folder and renamed
(atomic on POSIX), so a reader never sees a partial file; a per-entry file lock makes one process the
writer while the others wait and then read. Each ``.npz`` member carries a CRC-32 that is checked on
read, so a truncated or damaged entry is detected, reported and rebuilt, never used.

Why not MONAI's persistent datasets (read in monai 1.6): ``PersistentDataset`` and
``CacheNTransDataset`` write to the system temporary folder and ``shutil.move`` the file into the cache
(a copy, not an atomic rename, when /tmp is another file system, so readers can see a partial file),
let every worker or DDP process that misses write its own copy, recompute only files whose error
message says "Invalid magic number" (a truncated zip raises another error and stops training), key
entries on the pickled case (the file paths) rather than the files' size and mtime, and convert numpy
arrays to tensors (a cached item would differ from an uncached one). ``LMDBDataset`` needs the ``lmdb``
package, one database per cache that is written in one pass, and stores pickles. Here the items are
plain arrays (integer labels narrowed to the smallest integer type that holds them) plus a JSON
description of the dict around them: no pickle is ever loaded.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from monai.data import MetaTensor

from segpipe.console import progress
from segpipe.data.sources.layouts import VolumeCase
from segpipe.errors import DataError
from segpipe.io.atomic import atomic_path, write_text

# Bump when the stored layout or the meaning of an entry changes: every existing entry is then ignored.
CACHE_FORMAT_VERSION = 1
META_KEY = "__segpipe_cache__"
_INTEGER_TYPES = (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32)
# What a damaged or foreign file raises while it is read (zip structure, CRC-32, npy header, JSON).
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile)


def signature_hash(signature: Mapping[str, Any]) -> str:
    """16 hex digits of SHA-256 over the preprocessing ``signature`` and :data:`CACHE_FORMAT_VERSION`."""
    text = json.dumps({"format": CACHE_FORMAT_VERSION, "preprocessing": signature}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def case_sources(case: VolumeCase) -> list[Path]:
    """The files a case is read from: its channel images, then its label (if any)."""
    return [*case.images, *([case.label] if case.label is not None else [])]


def source_fingerprint(case: VolumeCase) -> list[list[Any]]:
    """``[resolved path, size, mtime_ns]`` of each source file of ``case`` (stat only; nothing is read).

    Raises:
        DataError: naming a source file that does not exist.
    """
    fingerprint = []
    for path in case_sources(case):
        try:
            stat = path.stat()
        except OSError:
            raise DataError(path, "file does not exist") from None
        fingerprint.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return fingerprint


# ---- item <-> arrays + JSON ------------------------------------------------------------------------
def _narrow(array: np.ndarray) -> np.ndarray:
    """An integer array in the smallest integer type that holds its values (labels: int64 -> int8)."""
    if array.dtype.kind not in "iu" or array.size == 0:
        return array
    lo, hi = int(array.min()), int(array.max())
    for dtype in _INTEGER_TYPES:
        if np.dtype(dtype).itemsize >= array.dtype.itemsize:
            break
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return array.astype(dtype)
    return array


class _Encoder:
    """Split an item into named arrays and a JSON description that says where each one goes back."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, value: np.ndarray) -> dict[str, Any]:
        key = f"a{len(self.arrays)}"
        self.arrays[key] = _narrow(np.ascontiguousarray(value))
        return {"key": key, "dtype": value.dtype.str}

    def encode(self, value: Any, where: str) -> Any:
        if isinstance(value, MetaTensor):  # values and affine; the transform history is not needed after it
            affine = self.array(value.affine.detach().cpu().numpy())
            return {"metatensor": self.array(value.as_tensor().detach().cpu().numpy()), "affine": affine}
        if isinstance(value, torch.Tensor):
            return {"tensor": self.array(value.detach().cpu().numpy())}
        if isinstance(value, np.ndarray | np.generic):
            if value.dtype.hasobject:
                raise TypeError(f"cannot store {where} (an object array) in the disk cache")
            return {"ndarray" if isinstance(value, np.ndarray) else "scalar": self.array(np.asarray(value))}
        if value is None or type(value) in (bool, int, float, str):
            return {"json": value}
        if isinstance(value, Path):
            return {"path": str(value)}
        if isinstance(value, tuple | list):
            items = [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
            return {"tuple" if isinstance(value, tuple) else "list": items}
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {"dict": {k: self.encode(v, f"{where}[{k!r}]") for k, v in value.items()}}
        raise TypeError(
            f"cannot store {where} of type {type(value).__name__} in the disk cache (it stores arrays, tensors, "
            "numbers, strings, paths and lists, tuples and str-keyed dicts of them)"
        )


def _decode(node: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
    """The value that :meth:`_Encoder.encode` described by ``node``, with its arrays' original dtypes."""

    def array(spec: dict[str, str]) -> np.ndarray:
        return arrays[spec["key"]].astype(np.dtype(spec["dtype"]), copy=False)

    kind, value = next(iter(node.items()))
    if kind == "metatensor":
        return MetaTensor(torch.from_numpy(array(value)), affine=torch.from_numpy(array(node["affine"])))
    if kind == "tensor":
        return torch.from_numpy(array(value))
    if kind == "ndarray":
        return array(value)
    if kind == "scalar":
        return array(value)[()]
    if kind == "json":
        return value
    if kind == "path":
        return Path(value)
    if kind in ("tuple", "list"):
        items = [_decode(v, arrays) for v in value]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict":
        return {k: _decode(v, arrays) for k, v in value.items()}
    raise ValueError(f"unknown entry kind {kind!r}")


def _unwrapped(compute: Callable[[], Mapping[str, Any]]) -> Mapping[str, Any]:
    """``compute()``, re-raising a :class:`DataError` that a MONAI ``Compose`` wrapped in a RuntimeError."""
    try:
        return compute()
    except RuntimeError as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


# ---- the cache -------------------------------------------------------------------------------------
class VolumeCache:
    """Preprocessed items of volume cases, one file each, under ``cache_dir/<signature hash>/``.

    Args:
        cache_dir: root folder of the cache (shared by datasets and settings: entries are keyed on both).
        signature: every setting that changes the preprocessed item (JSON-serialisable values).
    """

    def __init__(self, cache_dir: str | Path, signature: Mapping[str, Any]) -> None:
        self.signature = dict(signature)
        self.signature_hash = signature_hash(self.signature)
        self.folder = Path(cache_dir) / self.signature_hash

    def entry(self, case: VolumeCase) -> Path:
        """The file of ``case``: its name (made file-safe) and a hash of its source paths (names may repeat)."""
        paths = "\n".join(str(p.resolve()) for p in case_sources(case))
        digest = hashlib.sha256(paths.encode()).hexdigest()[:12]
        return self.folder / f"{re.sub(r'[^A-Za-z0-9._-]', '_', case.name)}-{digest}.npz"

    def _matches(self, archive: Any, case: VolumeCase) -> dict[str, Any] | None:
        """The entry's description when it was built from the current settings and source files, else None."""
        meta = json.loads(archive[META_KEY].tobytes().decode())
        expected = self._key(source_fingerprint(case))
        return meta if all(meta.get(k) == v for k, v in expected.items()) else None

    def _key(self, sources: list[list[Any]]) -> dict[str, Any]:
        return {"format": CACHE_FORMAT_VERSION, "signature": self.signature_hash, "sources": sources}

    def is_fresh(self, case: VolumeCase) -> bool:
        """Whether the entry exists and matches the signature and source files (reads its header only).

        Raises:
            DataError: naming a source file of ``case`` that does not exist.
        """
        try:
            with np.load(self.entry(case), allow_pickle=False) as archive:
                return self._matches(archive, case) is not None
        except _READ_ERRORS:  # missing or damaged
            return False

    def load(self, case: VolumeCase, warn: bool = True) -> dict[str, Any] | None:
        """The cached item of ``case``, or None when it is missing, stale or damaged (damage is warned about).

        Raises:
            DataError: naming a source file of ``case`` that does not exist.
        """
        path = self.entry(case)
        try:
            with np.load(path, allow_pickle=False) as archive:
                meta = self._matches(archive, case)
                if meta is None:
                    return None  # stale: a source file or the settings changed
                arrays = {key: archive[key] for key in archive.files if key != META_KEY}  # CRC-32 checked here
                return _decode(meta["item"], arrays)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except _READ_ERRORS as err:
            if warn:
                warnings.warn(f"{path}: damaged cache entry ({type(err).__name__}: {err}); rebuilding it", stacklevel=2)
            return None

    def store(self, case: VolumeCase, item: Mapping[str, Any], sources: list[list[Any]] | None = None) -> Path:
        """Write the entry of ``case`` atomically (temporary file in the same folder, then rename).

        ``sources`` is the :func:`source_fingerprint` taken before ``item`` was computed (default: now),
        so that a file rewritten while it was read leaves a stale entry rather than a wrong one.

        Raises:
            TypeError: when ``item`` holds a value the cache cannot store (it names the key).
            DataError: when the cache folder cannot be written.
        """
        encoder = _Encoder()
        sources = source_fingerprint(case) if sources is None else sources
        meta = {**self._key(sources), "case": case.name, "item": encoder.encode(dict(item), "item")}
        path = self.entry(case)
        payload = {META_KEY: np.frombuffer(json.dumps(meta).encode(), np.uint8), **encoder.arrays}
        self._make_folder()
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as file:
                np.savez(file, **payload)  # ZIP_STORED: uncompressed members, each with a CRC-32
        except OSError as err:
            raise DataError(path, f"cannot write the cache entry ({err.strerror or err}); set cache_dir") from None
        return path

    def _make_folder(self) -> None:
        try:
            (self.folder / "locks").mkdir(parents=True, exist_ok=True)
            info = self.folder / "signature.json"
            if not info.exists():
                content = {"format": CACHE_FORMAT_VERSION, "preprocessing": self.signature}
                write_text(info, json.dumps(content, indent=2, default=str) + "\n")
        except OSError as err:
            raise DataError(
                self.folder, f"cannot create the cache folder ({err.strerror or err}); set cache_dir to a writable one"
            ) from None

    def get(self, case: VolumeCase, compute: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
        """The cached item of ``case``; on a miss, ``compute()`` it and store it, one writer per entry.

        The first process to miss takes the entry's lock, checks again (another one may have written it
        meanwhile), computes and writes; the others wait on the lock and then read its file.

        Raises:
            DataError: from ``compute`` (an unreadable source file) or when the cache cannot be written.
        """
        item = self.load(case)
        if item is not None:
            return item
        self._make_folder()
        with FileLock(self.folder / "locks" / f"{self.entry(case).name}.lock"):
            item = self.load(case, warn=False)
            if item is None:
                sources = source_fingerprint(case)
                item = dict(_unwrapped(compute))
                self.store(case, item, sources)
        return item

    def build(
        self, cases: Iterable[VolumeCase], compute: Callable[[VolumeCase], Mapping[str, Any]], threads: int = 1
    ) -> tuple[int, list[DataError]]:
        """Write the missing or stale entries of ``cases`` with ``threads`` threads.

        Returns the number of entries written and the problems of cases that could not be read (left
        out, so that the data check can report them all).
        """
        written: list[VolumeCase] = []
        problems: list[DataError] = []

        def write(case: VolumeCase) -> None:
            try:
                if not self.is_fresh(case):
                    self.get(case, lambda: compute(case))
                    written.append(case)
            except DataError as err:
                problems.append(err)

        cases = list(cases)
        with ThreadPoolExecutor(max(1, threads)) as pool:
            list(progress(pool.map(write, cases), len(cases), "caching preprocessed volumes"))
        return len(written), problems
