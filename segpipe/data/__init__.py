"""Data: readers, pairing and splits, datasets and DataModules.

The DataModules load on first use (PEP 562): ``import segpipe.data.checks`` or the ONNX predict path
(segpipe.cli.predict_onnx) must not pull in Lightning through this package.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "FolderDataModule": "segpipe.data.modules.folder",
    "MNIDemo3DDataModule": "segpipe.data.demos.mni3d",
    "MNIDemoDataModule": "segpipe.data.demos.mni2d",
    "VolumeDataModule": "segpipe.data.modules.volumes",
    "build_mni_demo": "segpipe.data.demos.mni2d",
    "build_mni_demo3d": "segpipe.data.demos.mni3d",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
