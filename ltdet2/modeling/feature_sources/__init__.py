from .base import STAGES, FeatureSource, SourceContext
from .memory_feature_sampler import MemoryFeatureSampler
from .object_replay import ObjectReplay

__all__ = ["STAGES", "FeatureSource", "SourceContext", "MemoryFeatureSampler", "ObjectReplay"]
