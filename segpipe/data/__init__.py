"""Data: readers, pairing and splits, datasets and DataModules."""

from segpipe.data.demos.mni2d import MNIDemoDataModule, build_mni_demo
from segpipe.data.demos.mni3d import MNIDemo3DDataModule, build_mni_demo3d
from segpipe.data.modules.folder import FolderDataModule
from segpipe.data.modules.volumes import VolumeDataModule

__all__ = [
    "FolderDataModule",
    "MNIDemo3DDataModule",
    "MNIDemoDataModule",
    "VolumeDataModule",
    "build_mni_demo",
    "build_mni_demo3d",
]
