"""Your data: one loader class per dataset, a BaseDataLoader subclass that config.json's
`data_loader.type` names (every module here is searched for it). MnistDataLoader (data_loaders,
reading the files with mnist_files) is the example to copy."""

from data_loader.data_loaders import MnistDataLoader

__all__ = ["MnistDataLoader"]
