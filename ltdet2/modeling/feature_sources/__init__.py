from .base import STAGES, FeatureSource, SourceContext
from .feature_hallucination import FeatureHallucination
from .memory_feature_sampler import MemoryFeatureSampler
from .object_replay import ObjectReplay

__all__ = ["STAGES", "FeatureSource", "SourceContext", "FeatureHallucination", "MemoryFeatureSampler", "ObjectReplay"]
