"""Small utilities shared across ltdet2 (no Detectron2 or torch state)."""

from .files import content_identity, file_identity  # noqa: F401
from .json_io import read_json, write_json_atomic  # noqa: F401
