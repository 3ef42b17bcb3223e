"""segpipe: semantic segmentation of medical images on PyTorch Lightning (see docs/architecture.md)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("segpipe")
except PackageNotFoundError:  # imported from the copy shipped with an MLflow model (code_paths)
    __version__ = "unknown"
