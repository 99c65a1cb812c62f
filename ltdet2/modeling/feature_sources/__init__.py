from .base import STAGES, FeatureSource, SourceContext
from .memory_feature_sampler import MemoryFeatureSampler

__all__ = ["STAGES", "FeatureSource", "SourceContext", "MemoryFeatureSampler"]
