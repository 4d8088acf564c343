from data_loader.data_loaders import MnistDataLoader

__all__ = ["MnistDataLoader"]
