"""Data: readers, pairing and splits, datasets and DataModules."""

from segpipe.data.demo import MNIDemoDataModule, build_mni_demo
from segpipe.data.folder import FolderDataModule

__all__ = ["FolderDataModule", "MNIDemoDataModule", "build_mni_demo"]
