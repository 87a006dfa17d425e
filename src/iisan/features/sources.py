"""The feature source each kind of method gets (:attr:`iisan.methods.Method.source`), built
from what assembling a run has at hand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from iisan.cache.store import EncoderEntry, HiddenStateCache
from iisan.data.dataset import PreparedDataset
from iisan.features.cached import CachedSource, FeatureSource, IdOnlySource


@dataclass
class SourceContext:
    """What a source builder is given.

    Attributes:
        config: the run's ``TrainConfig``.
        dataset: the prepared dataset (raw texts and image paths).
        cache: the hidden-state cache, ``None`` for a method that reads ids only.
        entries: modality -> the cache's encoder entry.
        model: the assembled model (``model.layers``: what its tower reads).
        encoders: modality -> the encoders running inside the tower (the encoder baselines).
        device: where encoders run and a resident cache is kept.
        layers: the layers the source holds: the tower's, and the last one where a scorer's
            floor reads it (``None``: the tower's).
    """

    config: Any
    dataset: PreparedDataset
    cache: HiddenStateCache | None
    entries: dict[str, EncoderEntry]
    model: Any
    encoders: dict[str, Any]
    device: torch.device | str
    layers: dict[str, tuple[int, ...]] | None = None


def ids_only(context: SourceContext) -> FeatureSource:
    """Item ids and nothing else (``--method id``)."""
    return IdOnlySource()


def encoder_states(context: SourceContext) -> FeatureSource:
    """The frozen encoders' states of the layers the tower reads: from the cache, or computed
    by running the encoders (``--mode uncached``)."""
    layers = context.layers or context.model.layers
    if context.config.mode == "cached":
        return CachedSource(context.cache, layers, device=context.device)
    from iisan.features.live import LiveSource

    return LiveSource(context.dataset, {m: context.entries[m] for m in layers}, layers, context.device)


def raw_content(context: SourceContext) -> FeatureSource:
    """Tokenised texts and preprocessed images for the encoders inside the tower."""
    from iisan.features.live import RawContentSource

    entries = {m: context.entries[m] for m in context.encoders}
    return RawContentSource(context.dataset, entries, context.encoders)
