"""Putting a run together: dataset, cache, model and feature source, from a config or a run dir."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from iisan.cache.store import HiddenStateCache
from iisan.config import EMBEDDED_METHODS, TrainConfig
from iisan.data.dataset import PreparedDataset
from iisan.data.split import Splits, split_sequences
from iisan.errors import ConfigError
from iisan.features import CachedSource, FeatureSource, IdOnlySource
from iisan.models.baselines.embedded import EmbeddedEncoderItemEncoder
from iisan.features.live import LiveSource, RawContentSource, load_encoders
from iisan.models.recommender import SequentialRecommender, build_item_encoder
from iisan.models.user import UserEncoder
from iisan.checkpoint import WEIGHTS_FILE, load_weights, read_run_config


@dataclass
class Assembled:
    config: TrainConfig
    dataset: PreparedDataset
    cache: HiddenStateCache | None
    model: SequentialRecommender
    source: FeatureSource
    splits: Splits


def assemble(dataset_dir: str | Path, cache_dir: str | Path | None, config: TrainConfig,
             device: torch.device | str = "cpu", layers: dict[str, tuple[int, ...]] | None = None) -> Assembled:
    """Build everything a run needs. Sizes come from the cache manifest, never from literals.

    ``device`` is where encoders that run at every step (``uncached`` mode, the encoder
    baselines) are loaded; the caller moves the model. ``layers``: the side network's
    layers per modality when they are already decided (a trained run's); by default the
    config's rule picks them, skipping layers the cache shows to be constant.

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
    model, source = _model_and_source(config, dataset, cache, shapes, device, layers)
    flat, offsets = dataset.sequence_arrays()
    splits = split_sequences(flat, offsets, config.user.max_seq_len, dataset.num_items)
    return Assembled(config, dataset, cache, model, source, splits)


def _model_and_source(config: TrainConfig, dataset: PreparedDataset, cache: HiddenStateCache | None,
                      shapes: dict[str, tuple[int, int]], device,
                      layers: dict[str, tuple[int, ...]] | None = None) -> tuple[SequentialRecommender, FeatureSource]:
    user = UserEncoder(config.user)
    if config.method in EMBEDDED_METHODS:
        # The encoders run inside the tower on raw content; the cache only names them.
        modalities = tuple(m for m in config.side.encoder_modalities if m in shapes)
        entries = {m: cache.entry(m) for m in modalities}
        encoders = load_encoders(entries, modalities, device)
        item = EmbeddedEncoderItemEncoder(config.method, {m: e.model for m, e in encoders.items()},
                                          {m: entries[m]["pooling"] for m in modalities}, config.user.dim,
                                          adapter_bottleneck=config.side.bottleneck, lora_rank=config.lora_rank)
        return SequentialRecommender(item, user), RawContentSource(dataset, entries, encoders)
    constant = {m: cache.constant_layers(m) for m in shapes} if config.method == "iisan" and layers is None else None
    model = SequentialRecommender(build_item_encoder(config, shapes, dataset.num_items, constant, layers), user)
    if config.method == "id":
        return model, IdOnlySource()
    if config.mode == "cached":
        return model, CachedSource(cache, model.layers)
    return model, LiveSource(dataset, {m: cache.entry(m) for m in model.layers}, model.layers, device)


def assemble_run(run_dir: str | Path, mode: str | None = None) -> Assembled:
    """Rebuild a trained run from its directory and load its best weights."""
    run_dir = Path(run_dir)
    saved = read_run_config(run_dir)
    config = TrainConfig.from_json(saved["train"])
    if mode is not None:
        config = dataclasses.replace(config, mode=mode)
    layers = {m: tuple(v) for m, v in saved.get("layers", {}).items()} or None
    assembled = assemble(saved["dataset"], saved.get("cache"), config, layers=layers)
    load_weights(run_dir / WEIGHTS_FILE, assembled.model)
    assembled.model.eval()
    return assembled
