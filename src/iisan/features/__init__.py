"""Where item towers' inputs come from: the cache, or the frozen encoders on raw content."""

from iisan.features.cached import CachedSource, FeatureSource, IdOnlySource

__all__ = ["CachedSource", "FeatureSource", "IdOnlySource"]
