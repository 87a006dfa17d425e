"""Putting a run together: dataset, cache, model and feature source, from a config or a run dir."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from iisan.cache.store import EncoderEntry, HiddenStateCache
from iisan.config import ModelConfig, TrainConfig
from iisan.data.dataset import PreparedDataset
from iisan.data.split import Splits, split_sequences
from iisan.errors import CacheMismatchError, ConfigError, DatasetError
from iisan.features import FeatureSource
from iisan.features.live import load_encoders
from iisan.features.sources import SourceContext
from iisan.methods import get_method
from iisan.models.terms import fill_tables
from iisan.models.sequential import SequentialRecommender, build_item_encoder
from iisan.models.user import UserEncoder
from iisan.run.files import CATALOGUE_FILE, WEIGHTS_FILE, load_weights, read_run_config
from iisan.run.migrate import catalogue_from_sources
from iisan.run.model_file import SavedModel, read_model_config
from iisan.scoring.scorer import BlendScorer, load_scorer, scoring_layers

log = logging.getLogger(__name__)


@dataclass
class Assembled:
    """A run's parts. ``scorer`` is what ranks: the model with its fitted scorer, or the
    model alone (its own scores) when it has none or none is fitted yet."""

    config: TrainConfig
    dataset: PreparedDataset
    cache: HiddenStateCache | None
    model: SequentialRecommender
    source: FeatureSource
    splits: Splits
    shapes: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    scorer: SequentialRecommender | BlendScorer | None = None

    def __post_init__(self) -> None:
        if self.scorer is None:
            self.scorer = self.model


def assemble(dataset_dir: str | Path, cache_dir: str | Path | None, config: TrainConfig,
             device: torch.device | str = "cpu", layers: dict[str, tuple[int, ...]] | None = None) -> Assembled:
    """Build everything a run needs. Sizes come from the cache manifest, never from literals.

    ``device`` is where encoders that run at every step (``uncached`` mode, the encoder
    baselines) are loaded and where a cache that fits in memory is kept; the caller moves
    the model. ``layers``: the side network's
    layers per modality when they are already decided (a trained run's); by default the
    config's rule picks them, skipping layers the cache shows to be constant.

    Raises:
        ConfigError: a content method without a cache, or a cache lacking a needed modality.
        CacheMismatchError: the cache belongs to another dataset.
    """
    dataset = PreparedDataset.load(dataset_dir)
    cache = None
    shapes: dict[str, tuple[int, int]] = {}
    if get_method(config.method).needs_cache:
        if cache_dir is None:
            raise ConfigError(f"method {config.method!r} reads encoder states: pass --cache (Python: cache_dir=...; build it with `iisan encode`)")
        cache = HiddenStateCache.open(cache_dir, dataset.fingerprint)
        shapes = {m: (cache.num_layers(m), cache.hidden_size(m)) for m in cache.modalities}
        if config.side.modality == "auto":
            log.info("modality auto: %s (the cache holds %s states; --modality chooses)",
                     config.side.resolved(cache.modalities).modality, " and ".join(cache.modalities))
        config = dataclasses.replace(config, side=config.side.resolved(cache.modalities))  # "auto": what it holds
    torch.manual_seed(config.seed)
    model, source = _model_and_source(config, dataset, cache, shapes, device, layers)
    flat, offsets = dataset.sequence_arrays()
    splits = split_sequences(flat, offsets, config.user.max_seq_len, dataset.num_items)
    return Assembled(config, dataset, cache, model, source, splits, shapes)


def _model_and_source(config: TrainConfig, dataset: PreparedDataset, cache: HiddenStateCache | None,
                      shapes: dict[str, tuple[int, int]], device,
                      layers: dict[str, tuple[int, ...]] | None = None) -> tuple[SequentialRecommender, FeatureSource]:
    entries = {m: cache.entry(m) for m in shapes} if cache is not None else {}
    # Only a tower that chooses layers from the states needs to know the constant ones (a read of
    # the cache); the encoder baselines run the encoders themselves.
    choose = cache is not None and layers is None and get_method(config.method).reads == "states"
    constant = {m: cache.constant_layers(m) for m in shapes} if choose else None
    stored = {m: cache.stored_layers(m) for m in shapes} if cache is not None else None
    model, encoders = build_model(config.model, shapes, dataset.num_items, entries, device, constant, layers, stored)
    # a run fitted a scorer on (or will): its floor reads the last layer too
    read = scoring_layers(model, shapes) if config.content.blend else model.layers
    context = SourceContext(config, dataset, cache, entries, model, encoders, device, read)
    return model, get_method(config.method).build_source(context)


def build_model(config: ModelConfig, shapes: dict[str, tuple[int, int]], num_items: int,
                entries: dict[str, EncoderEntry],
                device="cpu", constant: dict[str, tuple[int, ...]] | None = None,
                layers: dict[str, tuple[int, ...]] | None = None,
                stored: dict[str, tuple[int, ...]] | None = None) -> tuple[SequentialRecommender, dict]:
    """The model ``config`` describes, from encoder shapes ``modality -> (L + 1, D)``; also
    the encoders it runs inside (the encoder baselines), loaded from ``entries``."""
    method = get_method(config.method)
    # first: the random initialisation order of every earlier run
    user = UserEncoder(config.user) if method.user is None else None
    encoders = {}
    if method.reads == "raw":
        # The encoders run inside the tower on raw content; the cache only names them.
        modalities = tuple(m for m in config.side.encoder_modalities if m in shapes)
        encoders = load_encoders({m: entries[m] for m in modalities}, modalities, device)
    poolings = {m: entries[m].pooling for m in encoders}
    item = build_item_encoder(config, shapes, num_items, constant, layers, encoders, poolings, stored)
    return SequentialRecommender(item, user or method.build_user(config, item)), encoders


@dataclass
class TrainedRun:
    """What recommending needs, read from the run folder alone (see :func:`load_trained`).

    Attributes:
        config: the run's training configuration.
        model: the best weights, in eval mode.
        scorer: what ranks: the model with its fitted scorer, or the model alone.
        items: the trained catalogue: ``item_id`` (1..N), ``key``, ``text``.
        encoders: modality -> encoder identity (name, weight hash, pooling, settings), to
            embed new items' content the way the catalogue was.
        encoder_modules: the encoders running inside an encoder baseline's tower.
    """

    config: TrainConfig
    model: SequentialRecommender
    items: object  # polars DataFrame
    encoders: dict[str, EncoderEntry]
    encoder_modules: dict
    scorer: SequentialRecommender | BlendScorer | None = None

    def __post_init__(self) -> None:
        if self.scorer is None:
            self.scorer = self.model


def load_trained(run_dir: str | Path, device: torch.device | str = "cpu") -> TrainedRun:
    """The trained model and its catalogue from the run folder only: its dataset and cache may
    be elsewhere or gone (they are recorded in ``config.json`` as provenance). The model
    (and the encoders of an encoder baseline) are put on ``device``.

    Runs written before the folder held its catalogue (no ``items.parquet``) read it from
    their dataset (:func:`iisan.run.migrate.catalogue_from_sources`).

    Raises:
        DatasetError: the run folder is incomplete or damaged (one line, with the fix).
    """
    import polars as pl

    run_dir = Path(run_dir)
    saved = read_run_config(run_dir)
    described = read_model_config(run_dir, saved)
    catalogue = run_dir / CATALOGUE_FILE
    if not catalogue.is_file():
        items = catalogue_from_sources(saved)
    else:
        try:
            items = pl.read_parquet(catalogue)
        except (OSError, pl.exceptions.PolarsError) as err:
            raise DatasetError(f"{catalogue} is damaged ({err}); retrain the run or restore the file") from None
    if items.columns[:3] != ["item_id", "key", "text"] or items["item_id"].to_list() != list(range(1, len(items) + 1)) \
            or len(items) != described.num_items:
        raise DatasetError(f"{catalogue} does not hold items 1..{described.num_items} with key and text; "
                           "retrain the run or restore the file")
    if items["key"].null_count() or items["key"].n_unique() != len(items):
        repeated = items.filter(pl.col("key").is_duplicated())["key"].unique().sort().head(3).to_list()
        raise DatasetError(f"{catalogue} repeats item keys ({', '.join(map(repr, repeated)) or 'or leaves one empty'}); "
                           "a key must name one item: retrain the run or restore the file")
    config = TrainConfig.from_json(saved["train"]).with_model(described.config)
    model, encoders = build_model(described.config, described.shapes, described.num_items, described.encoders,
                                  device, layers=described.layers or None)
    load_weights(run_dir / WEIGHTS_FILE, model)
    model.to(device).eval()
    # Serving reads the catalogue's vectors from the index: the word tables need not be made.
    scorer = load_scorer(run_dir, saved, described, model)
    return TrainedRun(config, model, items, described.encoders, encoders, scorer.eval() if scorer else None)


def require_trained_cache(described: SavedModel, cache: HiddenStateCache | None, run_dir: Path,
                          fix: str = "re-encode it with the run's settings (the left-hand values) or retrain") -> None:
    """The cache holds the states the run was trained on: for every modality the run read, the
    encoder, its weights, pooling, settings (token limits), precision and stored layers agree
    with ``model.json`` (given the dataset, they decide the numbers).

    Raises:
        CacheMismatchError: one line naming the modality, each differing value (run -> cache),
            and ``fix``.
    """
    if cache is None:
        return
    for modality, recorded in described.encoders.items():
        changes = recorded.changes(cache.entry(modality), modality)
        if changes:
            raise CacheMismatchError(f"{cache.root} is not the cache {run_dir} was trained on ({modality}: "
                                     f"{'; '.join(changes)}): {fix}")


def assemble_run(run_dir: str | Path, mode: str | None = None, device: torch.device | str = "cpu",
                 scorer: bool = True) -> Assembled:
    """Rebuild a trained run from its directory and load its best weights, on ``device``, with
    its fitted scorer unless ``scorer`` is false (one is about to be fitted again)."""
    run_dir = Path(run_dir)
    saved = read_run_config(run_dir)
    described = read_model_config(run_dir, saved)
    config = TrainConfig.from_json(saved["train"]).with_model(described.config)
    if mode is not None:
        config = dataclasses.replace(config, mode=mode)
    assembled = assemble(saved["dataset"], saved.get("cache"), config, device=device, layers=described.layers or None)
    require_trained_cache(described, assembled.cache, run_dir)
    load_weights(run_dir / WEIGHTS_FILE, assembled.model)  # loads onto the CPU model, then it moves
    assembled.model.to(device).eval()
    texts = assembled.dataset.items["text"].to_list()
    fill_tables(assembled.model, texts)  # knn's words: made again from the texts, not saved
    fitted = load_scorer(run_dir, saved, described, assembled.model) if scorer else None
    if fitted is not None:
        fitted.fill_terms(texts)
        assembled.scorer = fitted.eval()
    return assembled
