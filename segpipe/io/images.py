"""Readers and writers for 2D images and label masks (PNG, TIFF, JPEG).

Shape contract: images are returned as (H, W, C) arrays in their stored dtype, masks as (H, W) int64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from segpipe.errors import DataError
from segpipe.io.atomic import atomic_path

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
MASK_SUFFIXES = (".png", ".tif", ".tiff")

# Pillow's own guard against decompression bombs (a header claiming a huge size): refuse images over
# this many pixels instead of allocating gigabytes. Pillow only warns up to twice the limit, so the size
# from the header is also checked here, for Pillow and tifffile alike, before any pixel is decoded.
MAX_IMAGE_PIXELS = 2**28
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def _check_pixels(path: Path, shape: tuple[int, ...], samples: int = 1) -> None:
    """Refuse ``shape`` (as the header states it) with more than :data:`MAX_IMAGE_PIXELS` pixels."""
    pixels = int(np.prod(shape, dtype=np.float64)) // max(1, samples)
    if pixels > MAX_IMAGE_PIXELS:
        limit = f"over the {MAX_IMAGE_PIXELS} limit (a decompression bomb?)"
        raise DataError(path, f"header claims shape {tuple(shape)} ({pixels:.3g} pixels), {limit}")


def _read_tiff(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise DataError(path, "TIFF holds no image")
        series = tif.series[0]
        sizes = dict(zip(series.axes, series.shape, strict=True))
        _check_pixels(path, series.shape, sizes.get("S", 1))
        stacked = {axis: n for axis, n in sizes.items() if axis not in "YXS" and n > 1}
        if stacked:  # pages, z-slices, time points: not one 2D image
            raise DataError(path, f"is a TIFF stack (shape {series.shape}, axes {series.axes}); expected one 2D image")
        kept = [axis for axis in series.axes if axis in "YXS"]
        array = np.asarray(series.asarray()).reshape([sizes[axis] for axis in kept])
        return np.moveaxis(array, 0, -1) if kept[0] == "S" else array  # planar RGB -> (H, W, C)


def _read_array(path: Path) -> np.ndarray:
    if not path.exists():
        raise DataError(path, "file does not exist (dangling link?)" if path.is_symlink() else "file does not exist")
    if not path.is_file():
        raise DataError(path, "is a folder, expected an image file" if path.is_dir() else "is not a regular file")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty (0 bytes)")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _read_tiff(path)
        with Image.open(path) as im:  # reads the header only
            _check_pixels(path, (im.height, im.width))
            im.load()
            # Palette ("P") PNGs come back as their indices, which is what a label mask stores.
            return np.asarray(im)
    except Image.DecompressionBombError as err:
        raise DataError(path, f"image is too large to decode safely ({err})") from None
    except DataError:
        raise
    except Exception as err:
        text = " ".join(str(err).replace(f"'{path}'", "").replace(str(path), "").split())
        raise DataError(path, f"cannot be decoded as an image ({type(err).__name__}: {text})") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as (H, W, C); grayscale gets C=1."""
    path = Path(path)
    array = _read_array(path)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise DataError(path, f"expected a 2D image (H, W) or (H, W, C), got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.number):
        raise DataError(path, f"unsupported pixel type {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise DataError(path, "image contains NaN or Inf values")
    return array


def read_mask(path: str | Path) -> np.ndarray:
    """Read an integer label mask as (H, W) int64."""
    path = Path(path)
    array = _read_array(path)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise DataError(path, f"mask must be a single-channel label image, got shape {array.shape} (an RGB mask?)")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise DataError(path, "mask holds non-integer values; labels must be class indices 0..K-1")
    elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise DataError(path, f"unsupported mask type {array.dtype}")
    return array.astype(np.int64)


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write an integer mask as PNG (8-bit, or 16-bit when labels exceed 255)."""
    dtype = np.uint8 if mask.max(initial=0) < 256 else np.uint16
    with atomic_path(path) as tmp:
        Image.fromarray(mask.astype(dtype)).save(tmp, format="PNG")
