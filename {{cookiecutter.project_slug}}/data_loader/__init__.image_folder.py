from data_loader.data_loaders import MnistDataLoader
from data_loader.image_folder import ImageFolderDataLoader

__all__ = ["ImageFolderDataLoader", "MnistDataLoader"]
