"""Putting a run together: dataset, cache, model and feature source, from a config or a run dir."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from iisan.cache.store import HiddenStateCache
from iisan.config import TrainConfig
from iisan.data.dataset import PreparedDataset
from iisan.data.split import Splits, split_sequences
from iisan.errors import ConfigError
from iisan.models.features import CachedSource, FeatureSource, IdOnlySource
from iisan.models.live import LiveSource
from iisan.models.recommender import SequentialRecommender, build_item_encoder
from iisan.models.user import UserEncoder
from iisan.train.checkpoint import WEIGHTS_FILE, load_weights, read_run_config


@dataclass
class Assembled:
    config: TrainConfig
    dataset: PreparedDataset
    cache: HiddenStateCache | None
    model: SequentialRecommender
    source: FeatureSource
    splits: Splits


def assemble(dataset_dir: str | Path, cache_dir: str | Path | None, config: TrainConfig) -> Assembled:
    """Build everything a run needs. Sizes come from the cache manifest, never from literals.

    Raises:
        ConfigError: a content method without a cache, or a cache lacking a needed modality.
        CacheMismatchError: the cache belongs to another dataset.
    """
    dataset = PreparedDataset.load(dataset_dir)
    # The model's input length is the one the dataset was prepared for.
    config = dataclasses.replace(config, user=dataclasses.replace(config.user, max_seq_len=int(dataset.meta["max_seq_len"])))
    cache = None
    shapes: dict[str, tuple[int, int]] = {}
    if config.method != "id":
        if cache_dir is None:
            raise ConfigError(f"method {config.method!r} reads encoder states: pass --cache (build it with `iisan encode`)")
        cache = HiddenStateCache.open(cache_dir, dataset.fingerprint)
        shapes = {m: (cache.num_layers(m), cache.hidden_size(m)) for m in cache.modalities}
    torch.manual_seed(config.seed)
    model = SequentialRecommender(build_item_encoder(config, shapes, dataset.num_items), UserEncoder(config.user))
    if config.method == "id":
        source: FeatureSource = IdOnlySource()
    elif config.mode == "cached":
        source = CachedSource(cache, model.layers)
    else:
        source = LiveSource(dataset, {m: cache.entry(m) for m in model.layers}, model.layers)
    flat, offsets = dataset.sequence_arrays()
    splits = split_sequences(flat, offsets, config.user.max_seq_len, dataset.num_items)
    return Assembled(config, dataset, cache, model, source, splits)


def assemble_run(run_dir: str | Path, mode: str | None = None) -> Assembled:
    """Rebuild a trained run from its directory and load its best weights."""
    run_dir = Path(run_dir)
    saved = read_run_config(run_dir)
    config = TrainConfig.from_json(saved["train"])
    if mode is not None:
        config = dataclasses.replace(config, mode=mode)
    assembled = assemble(saved["dataset"], saved.get("cache"), config)
    load_weights(run_dir / WEIGHTS_FILE, assembled.model)
    assembled.model.eval()
    return assembled
