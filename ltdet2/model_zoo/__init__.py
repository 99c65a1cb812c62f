"""
ltdet2's configs as a model zoo, in the manner of :mod:`detectron2.model_zoo`: the repository's ``projects/`` and
``configs/`` ship with the package, so that ``get_config("loce.py")`` loads ``projects/loce.py`` from any working
directory and outside the checkout. No trained weights are hosted.
"""

from .model_zoo import get_config, get_config_file, list_configs

__all__ = ["get_config", "get_config_file", "list_configs"]
