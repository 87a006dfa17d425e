"""Configuration: one frozen dataclass per stage, validated on construction.

Every user-facing field is declared once with :func:`iisan.options.option`: its type
(``Literal`` for choices), default, bounds and help. ``iisan <command> --help``, the
``--config`` file keys, the options reference in the docs and the generic checks are all
derived from those fields; only checks across fields are written out here.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

from iisan.errors import ConfigError
from iisan.method_options import ContentConfig, MethodOptions, Precision, Whitening
from iisan.options import (
    build_config, check_options, differing_options, family_configs, nested_configs, option, option_specs,
)

Format = Literal["iisan-tsv", "amazon2023", "csv", "movielens", "recbole"]
Pooling = Literal["auto", "cls", "mean", "last"]
Modality = Literal["auto", "text", "image", "intra", "inter", "intra_inter"]
InterLayers = Literal["last", "mean", "truncate"]
DtlTarget = Literal["smaller", "larger"]
DtlKind = Literal["shared", "per_step"]
Head = Literal["auto", "compact", "wide"]
Mode = Literal["cached", "uncached"]
LayerRule = Literal["all", "every_other"]
Loss = Literal["full", "sampled", "in_batch"]
Samples = Literal["sequences", "prefixes"]  # what one training sample is
Schedule = Literal["constant", "cosine"]  # the learning rate over the run, after warm-up
UserVariant = Literal["reference", "recbole"]

FORMATS = get_args(Format)
POOLINGS = get_args(Pooling)
PRECISIONS = get_args(Precision)
MODALITIES = get_args(Modality)
INTER_LAYERS = get_args(InterLayers)
LOSSES = get_args(Loss)
Split = Literal["valid", "test"]  # the held-out items a run is evaluated on
IndexKind = Literal["flat", "hnsw"]  # exact search, or faiss HNSW
LogFormat = Literal["plain", "json"]
SPLITS = get_args(Split)
INDEX_KINDS = get_args(IndexKind)
DEVICES = ("auto", "cpu", "cuda")
EVAL_KS = (5, 10, 20)  # the cut-offs of HR@K and NDCG@K unless asked for others

CSV = "Columns (csv, recbole)"


@dataclass(frozen=True)
class CsvColumns:
    """Column names of the generic ``csv`` format (and field names of ``recbole``)."""

    user: str = option("user", flag="user-col", panel=CSV,
                       help="csv: user column; recbole: user field (user_id when left at user).")
    item: str = option("item", flag="item-col", panel=CSV,
                       help="csv: item column of the interactions; recbole: item field (item_id when left at "
                            "item).")
    timestamp: str = option("timestamp", flag="time-col", panel=CSV,
                            help="csv: timestamp column, a number or a date; recbole: time field.")
    item_key: str = option(
        "item", flag="item-key-col", panel=CSV, help="csv: item key column of the items table.")
    text: str = option("text", flag="text-col", panel=CSV,
                       help="csv: item text column; recbole: .item fields joined into the text, "
                            "comma-separated (the title-like fields when left at text).")
    image: str = option("image", flag="image-col", panel=CSV, help="csv: image path column (optional).")

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(frozen=True)
class PrepareConfig:
    """How to turn a source into a prepared dataset directory (fields: ``iisan prepare --help``)."""

    format: Format = option(aliases=("f",), help="Source format.")
    keep_last: int = option(
        0, minimum=0,
        help="Keep only each user's last N interactions (and count the older ones); 0 keeps every one. "
             "13 is the reference protocol (a model input of 10, the valid and test targets, one shift), "
             "as the reference code prepares its data sets: the benchmarks on them use it.")
    min_seq_len: int = option(5, minimum=3,  # leave-one-out needs a training transition plus valid and test
                              help="Drop users with fewer kept items (and count them).")
    kcore: int | None = option(None, minimum=0,
                               help="Iterative k-core filter on users and items before --keep-last; default 5 "
                                    "for amazon2023, off (0) otherwise.")
    strict: bool = option(
        False, help="Stop with exit code 2 at the first input problem instead of counting it.")
    images: Path | None = option(None, panel="Images", help="Folder of <key>.jpg|.jpeg|.png|.webp images.")
    images_lmdb: Path | None = option(None, panel="Images", help="LMDB of item key -> encoded image bytes.")
    items: Path | None = option(
        None, panel=CSV, help="csv: items table, when SOURCE is the interactions file.")
    columns: CsvColumns = option(
        default_factory=CsvColumns, cli=False, help="Column names of the csv format.")
    allow_outside_paths: bool = option(
        False, panel="Images",
        help="Read image paths that are absolute, contain .., or are symlinks leading out of the folder "
             "of the source (prepare) or of the items file (items add). By default prepare refuses and "
             "counts them as refused_image, and items add stops.")
    cold_items: float = option(
        0.0, minimum=0,
        help="Item cold-start protocol: hold this fraction of the items (the newest) out of training "
             "entirely; `iisan evaluate RUN --cold-start` adds them after training and ranks them for the "
             "users whose next item they were.")

    def __post_init__(self) -> None:
        check_options(self)
        if self.keep_last and self.min_seq_len > self.keep_last:
            raise ConfigError(
                f"min_seq_len ({self.min_seq_len}) cannot exceed keep_last ({self.keep_last}): "
                f"every user would be dropped"
            )
        if self.images is not None and self.images_lmdb is not None:
            raise ConfigError("give either --images or --images-lmdb, not both")
        if not self.cold_items < 1:
            raise ConfigError(f"cold_items must be a fraction in [0, 1), got {self.cold_items}")

    @property
    def effective_kcore(self) -> int:
        if self.kcore is not None:
            return self.kcore
        return 5 if self.format == "amazon2023" else 0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("images", "images_lmdb", "items"):
            out[key] = str(out[key]) if out[key] is not None else None
        out["kcore"] = self.effective_kcore
        return out


# Flags a command no longer takes because what they did moved: the one line that says where.
RETIRED_FLAGS = {
    ("prepare", "--max-seq-len"): "prepare keeps each user's whole history now; --keep-last N keeps their last N "
                                  "(--keep-last 13 is the reference protocol, --max-seq-len 10 before), and the "
                                  "model's input length is `iisan train --max-seq-len`",
}

STORE = "What the cache stores"


@dataclass(frozen=True)
class EncodeConfig:
    """How to build the hidden-state cache (fields: ``iisan encode --help``)."""

    text_encoder: str | None = option("minilm", none_word="none",
                                      help="Registry name (iisan encoders list) or local Hugging Face "
                                           "folder; none skips text.")
    image_encoder: str | None = option("dinov2-small", none_word="none",
                                       help="Registry name or local folder; none skips images (skipped "
                                            "anyway when no item has an image).")
    pooling: Pooling = option(
        "auto", panel=STORE,
        help="Per-layer pooling for both encoders: auto (the pooling each encoder was trained for: mean for "
             "sentence-transformers folders such as minilm and mpnet, last token for decoder LLMs, else "
             "cls), cls (first token, as in the paper), mean (over real tokens) or last (last real token).")
    text_pooling: Pooling | None = option(None, panel=STORE, help="Override --pooling for the text encoder.")
    image_pooling: Pooling | None = option(
        None, panel=STORE, help="Override --pooling for the image encoder.")
    encode_batch_size: int = option(64, minimum=1, aliases=("batch-size",),
                                    help="Items per encoder forward pass.")
    max_text_tokens: int = option(30, minimum=2, panel=STORE,  # room for the special tokens
                                  help="Truncate text to this many tokens (special tokens included).")
    image_size: int = option(224, minimum=1, panel=STORE, help="Resize and centre-crop images to this side.")
    workers: int = option(4, minimum=1, help="Threads decoding images while the model runs.")
    precision: Precision = option(
        "auto", help="The encoders' compute precision: auto (bf16 autocast on a GPU that supports it, else "
                     "fp32), fp32 or bf16. Recorded in the manifest; a resume must use the same.")
    text_layers: tuple[int, ...] | None = option(
        None, minimum=0, panel=STORE,
        help="Store only these text layers (0 = embedding output; the last is always stored), e.g. "
             "0,16,32,48,64,80 for an 80-layer LLM whose every layer would make the cache many times larger; "
             "default every layer.")
    image_layers: tuple[int, ...] | None = option(None, minimum=0, panel=STORE,
                                                  help="Store only these image layers; default every layer.")

    def __post_init__(self) -> None:
        check_options(self)
        if self.text_encoder is None and self.image_encoder is None:
            raise ConfigError("nothing to encode: give a text encoder, an image encoder or both")

    def pooling_for(self, modality: str) -> str:
        """This modality's pooling (``auto`` is resolved by the encoder)."""
        return getattr(self, f"{modality}_pooling") or self.pooling

    def settings(self, modality: str) -> dict[str, Any]:
        """The options that change a modality's cached values (compared on resume)."""
        if modality == "text":
            return {"max_text_tokens": self.max_text_tokens}
        return {"image_size": self.image_size}


SIDE = "Side network"
VERSA = "IISAN-Versa (encoders of different depth or width)"


@dataclass(frozen=True)
class SideNetworkConfig:
    """IISAN's side network (fields: ``iisan train --help``, panels Side network and IISAN-Versa)."""

    bottleneck: int = option(
        64, minimum=1, panel=SIDE, help="SANB bottleneck width (the inter tower's always).")
    layers: tuple[int, ...] | None = option(
        None, minimum=0, panel=SIDE,
        help="Encoder layers the side network reads, e.g. 0,2,4,6 (0 = embedding output); default: "
             "--layer-rule.")
    # "all" scored higher than LayerDrop on Amazon Scientific (docs: results).
    layer_rule: LayerRule = option(
        "all", panel=SIDE,
        help="Without --layers: all, or every_other (the paper's LayerDrop: every other layer counting back "
             "from the last). Either skips a layer whose state is the same for every item (layer 0 under CLS "
             "pooling, the first token of a causal model): a step spent on a constant adds nothing.")
    modality: Modality = option(
        "auto",
        help="Towers feeding the item embedding: text, image, intra (text + image), inter (the fused tower "
             "only) or intra_inter (all three); auto: intra_inter when the cache holds both encoders' "
             "states, else the one it holds.")
    gate_temperature: float = option(0.1, above=0, panel=SIDE, help="Gates are sigmoid(w / temperature).")
    inter_layers: InterLayers = option(
        "last", panel=VERSA,
        help="Encoders of different depth: the inter-modal tower takes as many steps as the shallower "
             "encoder has selected layers and reads the deeper one's in that many contiguous groups: each "
             "group's last layer, or its mean; truncate drops the extra layers instead (a naive control).")
    dtl_to: DtlTarget = option(
        "smaller", panel=VERSA,
        help="Encoders of different width: the dimension transformation maps the wider encoder's states to "
             "the smaller width, or the narrower one's to the larger, before inter-modal fusion.")
    dtl: DtlKind = option("shared", panel=VERSA,
                          help="That transformation: shared (one map per modality for every inter step) or "
                               "per_step (one per step, as the reference's Versa scripts).")
    text_layers: tuple[int, ...] | None = option(
        None, minimum=0, panel=VERSA,
        help="The text encoder's layers, for its intra tower and the inter tower (overrides --layers), e.g. "
             "4,19,34,49,64,79.")
    image_layers: tuple[int, ...] | None = option(None, minimum=0, panel=VERSA,
                                                  help="The image encoder's layers (overrides --layers).")
    text_steps: int | None = option(
        None, minimum=1, panel=VERSA,
        help="Group layer-dropping for the text encoder: split its non-constant layers into this many "
             "contiguous groups and read the last of each (e.g. 6 of an 80-layer LLM's 81 states).")
    image_steps: int | None = option(None, minimum=1, panel=VERSA, help="The same for the image encoder.")
    head: Head = option(
        "auto", panel=SIDE,
        help="Tower heads: wide (D -> D -> d, the paper's), compact (D -> d -> d, the reference's Versa "
             "draft: 67M parameters fewer at D = 8192) or auto (compact for encoders 1024 wide or wider, wide "
             "below).")
    text_bottleneck: int | None = option(None, minimum=1, panel=SIDE,
                                         help="SANB width of the text tower (default: --bottleneck).")
    image_bottleneck: int | None = option(None, minimum=1, panel=SIDE,
                                          help="SANB width of the image tower (default: --bottleneck).")

    def __post_init__(self) -> None:
        check_options(self)

    @property
    def encoder_modalities(self) -> tuple[str, ...]:
        """The encoders this setting reads (``auto``: whichever the cache holds)."""
        return {"text": ("text",), "image": ("image",)}.get(self.modality, ("text", "image"))

    def resolved(self, available: tuple[str, ...]) -> SideNetworkConfig:
        """``auto`` made concrete for a cache holding the ``available`` encoders' states;
        any other modality as it is."""
        if self.modality != "auto":
            return self
        both = "text" in available and "image" in available
        return replace(self,
                       modality="intra_inter" if both else ("image" if "image" in available else "text"))

    def bottleneck_for(self, modality: str) -> int:
        """The SANB width of ``modality``'s tower (``inter`` uses ``bottleneck``)."""
        return getattr(self, f"{modality}_bottleneck", None) or self.bottleneck


USER = "User encoder (SASRec)"
OPTIM = "Optimisation"


@dataclass(frozen=True)
class UserEncoderConfig:
    """The SASRec-style user encoder (and the item embedding width ``dim``).

    ``variant`` picks the details that differ between the two SASRec implementations this
    project is compared with; the architecture is otherwise the same. ``recbole`` is the
    default: it scored higher on validation for both IISAN and the id model.
    """

    dim: int = option(64, minimum=1, panel=USER, help="Width of item and user embeddings.")
    blocks: int = option(2, minimum=1, panel=USER, help="Transformer blocks of the user encoder.")
    heads: int = option(2, minimum=1, panel=USER, help="Attention heads (must divide --dim).")
    dropout: float = option(0.1, minimum=0, panel=USER, help="Dropout of the user encoder.")
    max_seq_len: int = option(
        10, minimum=1, panel=USER,
        help="Model input length: each training sample, each evaluated and each served history is its "
             "last max-seq-len items (a user's whole history is still what they have seen).")
    variant: UserVariant = option(
        "recbole", flag="user-encoder", panel=USER,
        help="The user encoder's details: reference (IISAN's reference code: ReLU, xavier-normal init, "
             "LayerNorm eps 1e-6, bias-free attention projections) or recbole (RecBole's SASRec: GELU, "
             "normal(0, 0.02) init, eps 1e-12, biased projections).")

    def __post_init__(self) -> None:
        check_options(self)
        if self.dim % self.heads:
            raise ConfigError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if not self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


# The scorer fitted after training (iisan.scoring).

BlendSelect = Literal["overall", "balanced"]  # see iisan.scoring.calibrate

SCORE_PANEL = "New and rare items"


@dataclass(frozen=True)
class ScoreConfig:
    """How the score blend is fitted on validation (:mod:`iisan.scoring`)."""

    blend_groups: int = option(
        3, minimum=1, maximum=8, panel=SCORE_PANEL,
        help="Fit the blend's weights separately for this many equally large groups of users, by the share "
             "of rare items (cold or tail) in their history: users who keep choosing rare items tend to "
             "choose one next, where the content floor knows more. 1: one set of weights for everyone.")
    blend_terms: int = option(
        512, minimum=0, maximum=8192, panel=SCORE_PANEL,
        help="Columns of the items' word vectors (TF-IDF over words and pairs of adjacent words of the "
             "text, hashed; fitted on the catalogue's texts) that the blend's floor adds to the frozen "
             "content's cosine: the exact brand names, model numbers and sizes a sentence encoder blurs. "
             "0: the frozen content alone.")
    blend_whiten: Whitening = option(
        "auto", panel=SCORE_PANEL,
        help="Whiten the content the blend's floor reads (each encoder's catalogue mean removed, its "
             "covariance made the identity, fitted on the catalogue after training) so that directions every "
             "item shares do not dominate the cosine: on, off, or auto (the blend is fitted both ways and "
             "validation keeps the better).")
    blend_select: BlendSelect = option(
        "overall", panel=SCORE_PANEL,
        help="What the blend's weights are chosen for on validation: overall (NDCG@10 over all users, "
             "most of whom want popular items) or balanced (the mean of NDCG@10 over the cold, tail and head "
             "slices: new and rare items weigh as much as popular ones).")
    serve_width: int = option(
        128, minimum=0, maximum=4096, panel=SCORE_PANEL,
        help="Width of the index's first stage: the blend's item vectors mapped to this many columns (the "
             "best low-rank fit of its scores on the catalogue and validation) and held as one byte each, "
             "whose best candidates are scored again exactly with the full vectors (kept on disk). 0, or "
             "at least the full width: the full vectors, one exact stage.")
    candidates: int = option(
        0, minimum=0, panel=SCORE_PANEL,
        help="Items the first stage hands to exact scoring; 0: the fewest of 50, 100, ..., 1600 whose "
             "served ranking is within 0.1% of exact scoring on validation.")

    def __post_init__(self) -> None:
        check_options(self)



@dataclass(frozen=True)
class ModelConfig:
    """What a model is, apart from how it is trained: the method, its side network, user
    encoder and own options. Saved beside the weights (``RUN/model.json``, see
    :mod:`iisan.run.model_file`); a resumed run must keep it (the recipe, every other option
    of :class:`TrainConfig`, may change)."""

    method: str
    side: SideNetworkConfig
    user: UserEncoderConfig
    method_options: MethodOptions | None = None

    @property
    def content(self) -> ContentConfig:
        """The content methods' options, or no offsets and no blend (see :attr:`TrainConfig.content`)."""
        return self.method_options if isinstance(self.method_options, ContentConfig) else ContentConfig.unused()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def changes_from(self, run: ModelConfig) -> list[str]:
        """Where this model differs from ``run``'s, one ``--flag value (the run has x)`` each."""
        mine, theirs = (TrainConfig(**{name: getattr(config, name) for name in self.__dataclass_fields__})
                        for config in (self, run))
        return [f"--{name.replace('_', '-')} {value} (the run has {old})"
                for name, value, old in differing_options(mine, theirs)]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelConfig:
        """Raises: ConfigError: an unknown field or a value of the wrong type (one line)."""
        if not isinstance(data, dict) or not set(data) <= {f for f in cls.__dataclass_fields__}:
            stray = sorted(set(data) - set(cls.__dataclass_fields__)) if isinstance(data, dict) else ["model"]
            raise ConfigError(f"{stray[0]} is not a field of a model's config")
        return TrainConfig.from_json(data).model


@dataclass(frozen=True)
class TrainConfig:
    """One training run (fields: ``iisan train --help``; a method's registry entry may
    change some defaults, see :meth:`for_method`): the model it trains (:attr:`model`) and
    the recipe it trains it with (every other field)."""

    method: str = option("iisan", choices=lambda: _registry().method_names(), help=lambda: _registry().methods_help())
    mode: Mode = option("cached", help="cached: read the cache; uncached: run the frozen encoders in the "
                                       "graph under no_grad (same results, slower).")
    epochs: int = option(30, minimum=1, help="Maximum epochs (the cosine schedule reaches zero at the last).")
    train_batch_size: int = option(64, minimum=1, aliases=("batch-size",),
                                   help="Training samples per step (with --loss in_batch the negatives come "
                                        "from them); under torchrun the global batch.")
    # 1e-3 (RecBole's SASRec default) beat the reference's 2e-4 / 1e-4 within a patience-5
    # budget; on small catalogues the reference rates stop early before learning anything.
    lr: float = option(1e-3, above=0, help="Peak learning rate of the user encoder, heads and fusion.")
    side_lr: float = option(1e-3, above=0, panel=OPTIM,
                            help="Peak learning rate of the side network's blocks and gates, or of the "
                                 "trained encoder parameters for fft, adapter, lora, bitfit.")
    weight_decay: float = option(0.0, minimum=0, panel=OPTIM, help="AdamW weight decay.")
    grad_clip: float = option(5.0, above=0, panel=OPTIM, help="Clip the gradient norm to this.")
    patience: int = option(5, minimum=1, panel=OPTIM,
                           help="Stop after this many epochs without a better validation NDCG@10.")
    schedule: Schedule = option("cosine", panel=OPTIM,
                                help="Every learning rate over the run: constant, or cosine (down to zero at "
                                     "--epochs; early stopping may end the run before).")
    warmup_epochs: float = option(1.0, minimum=0, panel=OPTIM,
                                  help="Raise every learning rate linearly from zero over this many epochs "
                                       "first (may be fractional).")
    loss: Loss = option("in_batch",
                        help="Candidates of the next-item softmax: full (every item of the catalogue, "
                             "RecBole's cross-entropy), sampled (the batch's items plus --negatives drawn by "
                             "popularity) or in_batch (the reference's: the batch's item slots); sampled and "
                             "in_batch are log-popularity corrected and mask the user's own items.")
    negatives: int = option(1024, minimum=0, panel=OPTIM, help="Extra negatives per step for --loss sampled.")
    samples: Samples = option("sequences", panel=OPTIM,
                              help="What one training sample is: sequences (a user's window, a target at "
                                   "every position: SASRec's paper, the reference) or prefixes (every prefix "
                                   "on its own, its next item the target: RecBole's SASRec).")
    seed: int = option(42, help="Random seed (initialisation, batch order, dropout).")
    eval_user_chunk: int = option(1024, minimum=1, aliases=("eval-batch-size",), panel=OPTIM,
                                  help="Users scored at once when validating and testing (fewer on "
                                       "catalogues too large for that many rows of scores).")
    include_history: bool = option(False,
                                   help="Rank the user's own history too when validating and testing "
                                        "(RecBole's protocol); by default it is excluded, as in the paper.")
    side: SideNetworkConfig = option(default_factory=SideNetworkConfig, cli=False, help="The side network.")
    user: UserEncoderConfig = option(default_factory=UserEncoderConfig, cli=False, help="The user encoder.")
    score: ScoreConfig = option(default_factory=ScoreConfig, cli=False,
                                help="How the score blend is fitted after training (iisan.scoring).")
    method_options: MethodOptions | None = option(
        None, cli=False, families=lambda: _registry().option_classes(),
        help="The method's own options, of the class its registry entry names (None: that class's defaults, "
             "or nothing for a method without options of its own).")

    def __post_init__(self) -> None:
        check_options(self)
        if not self.warmup_epochs <= self.epochs:
            raise ConfigError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        own = _registry().get_method(self.method).options
        if self.method_options is None and own is not None:
            object.__setattr__(self, "method_options", own())
        elif self.method_options is not None and type(self.method_options) is not own:
            raise ConfigError(f"--method {self.method} does not read {type(self.method_options).__name__}'s "
                              f"options ({_registry().users_of(type(self.method_options))} do)")

    @property
    def model(self) -> ModelConfig:
        """The architecture part: what the model is rebuilt from and a resume must keep."""
        return ModelConfig(self.method, self.side, self.user, self.method_options)

    def with_model(self, model: ModelConfig) -> TrainConfig:
        """This recipe for ``model`` (a trained run's, read from its ``model.json``)."""
        return replace(self, method=model.method, side=model.side, user=model.user, method_options=model.method_options)

    @property
    def content(self) -> ContentConfig:
        """The content methods' options (id offsets, the blend), or what every other method does:
        no offsets, no blend."""
        return self.model.content

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> TrainConfig:
        """A config from flat option values (``iisan train``'s, a ``--config`` file's): the
        method's own defaults (its registry entry's), then ``options``; the side network's,
        user encoder's, scorer's and the method's own fields go to them.

        Raises:
            ConfigError: an option the method never reads (``--knn-terms`` with ``--method
                iisan``), or an unknown one.
        """
        registry = _registry()
        method = options.get("method", cls.method)
        entry = registry.get_method(method)
        own = {spec.name for spec in option_specs(entry.options)} if entry.options else set()
        others = {spec.name: member for members in family_configs(cls).values() for member in members
                  for spec in option_specs(member)}
        stray = sorted(name for name in options if name in others and name not in own)
        if stray:
            flag = next(s.flag for s in option_specs(others[stray[0]]) if s.name == stray[0])
            raise ConfigError(f"--{flag} is an option of {registry.users_of(others[stray[0]])}: --method {method} "
                              f"never reads it")
        options = {**entry.defaults, **options, "method": method}
        given = {name: options.pop(name) for name in own if name in options}
        config = build_config(cls, options)
        return replace(config, method_options=entry.options(**given)) if given else config

    @classmethod
    def for_method(cls, method: str, **changes: Any) -> TrainConfig:
        """``method``'s own defaults, then ``changes``: flat option values, or a whole nested
        config (``side=``, ``user=``, ``score=``, ``method_options=``)."""
        whole = {key: changes.pop(key) for key in (*nested_configs(cls), *family_configs(cls)) if key in changes}
        config = cls.from_options({"method": method, **changes})
        return replace(config, **whole) if whole else config

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """A run's saved ``config.json`` ``train`` entry in this iisan's format (older formats
        are brought to it by :mod:`iisan.run.migrate` when the run is read).

        Raises:
            ConfigError: a field this iisan does not know, or a value of the wrong type (one
                line naming the field).
        """
        data = dict(data)
        try:
            groups = {name: kind(**data.pop(name, {})) for name, kind in nested_configs(cls).items()}
            own = _registry().get_method(data.get("method", cls.method)).options
            method_options = data.pop("method_options", None)
            if method_options is not None:
                groups["method_options"] = own(**method_options) if own is not None else None
            return cls(**data, **groups)
        except TypeError as err:  # a stray field, or a group that is not an object
            stray = re.search(r"unexpected keyword argument '(\w+)'", str(err))
            if stray:
                raise ConfigError(f"{stray.group(1)} is not an option of this iisan (saved by a newer one?)") from None
            raise ConfigError(f"a group of options is not an object: {err}") from None


def _registry():
    """The method registry (:mod:`iisan.methods`), read when a config asks it, never when this
    module is imported: methods registered later are choices too, and the registry, which names
    config classes, stays the owner of what a method reads (as peft's ``PeftConfig`` reads its
    type mapping in ``from_peft_type``)."""
    import iisan.methods

    return iisan.methods


# Using a trained run: evaluate, recommend, index, serve.


@dataclass(frozen=True)
class EvaluateConfig:
    """What ``iisan evaluate`` measures (fields: ``iisan evaluate --help``)."""

    split: Split = option("test", help="Which held-out item to predict.")
    ks: tuple[int, ...] = option(EVAL_KS, flag="k", minimum=1,
                                 help="Cut-offs for HR@K and NDCG@K, comma-separated.")
    include_history: bool = option(False, help="Rank the user's own history too (excluded by default, as in "
                                               "the paper); stored as SPLIT_with_history.")
    cold_start: bool = option(
        False, help="The item cold-start protocol instead of a split: add the items the dataset held out "
                    "(prepare --cold-items) to a copy of the run, as `iisan items add` does, and rank them "
                    "for the users whose next item they were. Stored under cold_start.")
    unblended: bool = option(False, help="Score a blended run with its trained model alone, to see what the "
                                         "blend adds; stored as SPLIT_unblended.")

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(frozen=True)
class Query:
    """One recommendation request, the one type for it: ``iisan recommend``'s options, what
    :meth:`iisan.serving.recommender.Recommender.recommend` takes, and what a ``POST
    /recommend`` body becomes (:class:`iisan.serving.schema.RecommendRequest`)."""

    history: tuple[str, ...] | None = option(None, help="The user's item keys, oldest first, "
                                                   "comma-separated; only the last max-seq-len feed the model.")
    user: str | None = option(None, help="Or a user of the run's dataset: their whole history there.")
    k: int = option(10, minimum=1, aliases=("k",), help="How many items to recommend.")
    exclude_seen: bool = option(True, off_flag="include-seen",
                                help="Leave the history's items out of the answer (--include-seen keeps them).")
    skip_unknown: bool = option(False, help="Ignore keys the catalogue does not hold (by default they are an "
                                            "error naming them).")

    def __post_init__(self) -> None:
        check_options(self)
        if (self.history is None) == (self.user is None):
            raise ConfigError("give history (item keys) or user, one of them")


@dataclass(frozen=True)
class IndexConfig:
    """The item index a run serves from (``iisan index build``)."""

    index: IndexKind = option("flat", help="flat: exact inner-product search; hnsw: approximate, for "
                                           "catalogues past a million items.")
    # Their ranges are the index's (iisan.search.HNSW_BOUNDS), checked when it is built.
    hnsw_m: int = option(32, help="HNSW links per node.")
    # 512: on a 1M-item catalogue, bench/serve.py's recall and latency chose it over 128.
    ef_search: int = option(512, help="HNSW candidates at query time (higher: better recall, slower).")

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(frozen=True)
class ServeConfig:
    """The HTTP service (``iisan serve``)."""

    host: str = option("127.0.0.1", help="Address to bind; anything but loopback exposes the service.")
    port: int = option(8000, minimum=1, maximum=65535, help="TCP port.")
    token_file: Path | None = option(None, help="File holding the bearer token that POST /items requires.")
    access_log: bool = option(True, help="One line per request on stderr (also off with --quiet).")
    log_format: LogFormat = option("plain", help="The request log: plain (time, client, method, path, "
                                                 "status, ms, request id) or one JSON object per line.")

    def __post_init__(self) -> None:
        check_options(self)
