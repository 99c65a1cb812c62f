"""ltdet2's config helpers: the method helpers that LazyConfig files call (``ltdet2.config.loce``, ...)
and the YAML (yacs) keys of ltdet2's heads (``add_ltdet2_config``)."""

from .yaml_config import add_ltdet2_config

__all__ = ["add_ltdet2_config"]
