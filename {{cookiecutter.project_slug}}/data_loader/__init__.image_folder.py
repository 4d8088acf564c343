"""Your data: one loader class per dataset, a BaseDataLoader subclass that config.json's
`data_loader.type` names (every module here is searched for it). ImageFolderDataLoader
(image_folder, decoding and caching with image_files) reads your images, one folder per class;
MnistDataLoader (data_loaders, reading the files with mnist_files) is the smallest example."""

from data_loader.data_loaders import MnistDataLoader
from data_loader.image_folder import ImageFolderDataLoader

__all__ = ["ImageFolderDataLoader", "MnistDataLoader"]
