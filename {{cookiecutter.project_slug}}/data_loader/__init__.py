from data_loader.data_loaders import MnistDataLoader
{%- if cookiecutter.dataset == "image_folder" %}
from data_loader.image_folder import ImageFolderDataLoader

__all__ = ["ImageFolderDataLoader", "MnistDataLoader"]
{%- else %}

__all__ = ["MnistDataLoader"]
{%- endif %}
