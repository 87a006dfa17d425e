"""The hidden-state cache: frozen encoders' per-layer states, computed once per item."""

from iisan.cache.store import HiddenStateCache

__all__ = ["HiddenStateCache"]
