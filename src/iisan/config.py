"""Configuration: one frozen dataclass per stage, validated on construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from iisan.errors import ConfigError
from iisan.methods import get_method, method_names

FORMATS = ("iisan-tsv", "amazon2023", "csv", "movielens", "recbole")
SPLITS = ("valid", "test")  # the held-out items a run is evaluated on
INDEX_KINDS = ("flat", "hnsw")  # exact search, or faiss HNSW
EVAL_KS = (5, 10, 20)  # the cut-offs of HR@K and NDCG@K unless asked for others
POOLINGS = ("auto", "cls", "mean", "last")


@dataclass(frozen=True)
class CsvColumns:
    """Column names of the generic ``csv`` format."""

    user: str = "user"
    item: str = "item"
    timestamp: str = "timestamp"
    item_key: str = "item"
    text: str = "text"
    image: str = "image"


@dataclass(frozen=True)
class PrepareConfig:
    """How to turn a source into a prepared dataset directory.

    Args:
        format: one of :data:`FORMATS`.
        max_seq_len: the model's input length; each user keeps the last ``max_seq_len + 3``
            items (train inputs, plus the valid and test targets and one shift).
        min_seq_len: users with fewer kept items are dropped (and counted).
        kcore: iterative k-core filter on users and items before truncation; ``None``
            means the format's default (5 for ``amazon2023``, off otherwise).
        strict: stop at the first problem in the input instead of counting it.
        images: folder with ``<key>.jpg|.jpeg|.png|.webp`` files.
        images_lmdb: LMDB with item keys as keys and encoded image bytes as values.
        items: items table for the ``csv`` format when SOURCE is the interactions file.
        columns: column names for the ``csv`` format.
        allow_outside_paths: read image paths that are absolute, climb with ``..`` or are
            symlinks leading out of the source (refused and counted by default).
        cold_items: the fraction of items held out of training entirely, newest first, for
            the item cold-start protocol (see :mod:`iisan.data.cold_start`); 0 (off) by default.
    """

    format: str
    max_seq_len: int = 10
    min_seq_len: int = 5
    kcore: int | None = None
    strict: bool = False
    images: Path | None = None
    images_lmdb: Path | None = None
    items: Path | None = None
    columns: CsvColumns = field(default_factory=CsvColumns)
    allow_outside_paths: bool = False
    cold_items: float = 0.0

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"unknown format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if self.max_seq_len < 1:
            raise ConfigError(f"max_seq_len must be at least 1, got {self.max_seq_len}")
        if self.min_seq_len < 3:
            # Leave-one-out needs at least one training transition plus valid and test targets.
            raise ConfigError(f"min_seq_len must be at least 3, got {self.min_seq_len}")
        if self.min_seq_len > self.max_seq_len + 3:
            raise ConfigError(
                f"min_seq_len ({self.min_seq_len}) cannot exceed max_seq_len + 3 "
                f"({self.max_seq_len + 3}): every user would be dropped"
            )
        if self.kcore is not None and self.kcore < 0:
            raise ConfigError(f"kcore must be 0 (off) or positive, got {self.kcore}")
        if self.images is not None and self.images_lmdb is not None:
            raise ConfigError("give either --images or --images-lmdb, not both")
        if not 0 <= self.cold_items < 1:
            raise ConfigError(f"cold_items must be a fraction in [0, 1), got {self.cold_items}")

    @property
    def keep_len(self) -> int:
        """How many of each user's most recent items are kept."""
        return self.max_seq_len + 3

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


@dataclass(frozen=True)
class EncodeConfig:
    """How to build the hidden-state cache.

    Args:
        text_encoder / image_encoder: registry name or local Hugging Face folder; ``None``
            skips that modality (the image encoder is also skipped when no item has an image).
        pooling: per-layer pooling for both encoders: ``auto`` (default: the pooling each
            encoder was trained for, from its sentence-transformers config; else ``last``
            for decoder LLMs and ``cls`` for the rest), ``cls`` (first token, as in the
            paper), ``mean`` (over real tokens) or ``last`` (last real token).
        text_pooling / image_pooling: override ``pooling`` for one encoder.
        batch_size: items per forward pass.
        max_text_tokens: text is truncated to this many tokens (special tokens included).
        image_size: images are resized and centre-cropped to this side.
        workers: threads decoding images while the model runs.
        precision: the encoders' compute precision: ``auto`` (bfloat16 autocast on a GPU
            that supports it, float32 elsewhere), ``fp32`` or ``bf16``; recorded per
            encoder in the manifest.
        text_layers / image_layers: store only these layers (0 = embedding output; the
            last layer is always stored), for deep encoders whose every layer would make
            the cache many times larger (an 80-layer LLM: 81 states per item). ``None``:
            every layer.
    """

    text_encoder: str | None = "minilm"
    image_encoder: str | None = "dinov2-small"
    pooling: str = "auto"
    text_pooling: str | None = None
    image_pooling: str | None = None
    batch_size: int = 64
    max_text_tokens: int = 30
    image_size: int = 224
    workers: int = 4
    precision: str = "auto"
    text_layers: tuple[int, ...] | None = None
    image_layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("pooling", "text_pooling", "image_pooling"):
            value = getattr(self, name)
            if value is not None and value not in POOLINGS:
                raise ConfigError(f"{name} must be one of {', '.join(POOLINGS)}, got {value!r}")
        if self.text_encoder is None and self.image_encoder is None:
            raise ConfigError("nothing to encode: give a text encoder, an image encoder or both")
        for name in ("batch_size", "max_text_tokens", "image_size", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_text_tokens < 2:
            raise ConfigError("max_text_tokens must leave room for the special tokens (at least 2)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("text_layers", "image_layers"):
            check_layer_list(name, getattr(self, name))

    def pooling_for(self, modality: str) -> str:
        """This modality's pooling (``auto`` is resolved by the encoder)."""
        return getattr(self, f"{modality}_pooling") or self.pooling

    def settings(self, modality: str) -> dict[str, Any]:
        """The options that change a modality's cached values (compared on resume)."""
        if modality == "text":
            return {"max_text_tokens": self.max_text_tokens}
        return {"image_size": self.image_size}


MODALITIES = ("auto", "text", "image", "intra", "inter", "intra_inter")
INTER_LAYERS = ("last", "mean", "truncate")
DTL_TARGETS = ("smaller", "larger")
DTL_KINDS = ("shared", "per_step")
HEADS = ("auto", "compact", "wide")
# head="auto" is compact from this encoder width up (LLMs: 2048-8192), wide below (BERT-
# and ViT-sized encoders, where the paper's wide head is measured; see the README).
COMPACT_HEAD_FROM = 1024
# From the method registry (iisan.methods): one entry per method.
METHODS = method_names()
EMBEDDED_METHODS = method_names(reads="raw")  # run and train the encoders on raw content
MODES = ("cached", "uncached")
LAYER_RULES = ("all", "every_other")
# Popularity slices of a target item, by its occurrences in the training part: (name, fewest,
# most), bounds inclusive (see iisan.evaluation.slices).
SLICES: tuple[tuple[str, int, float], ...] = (("cold", 0, 0), ("tail", 1, 4), ("head", 5, float("inf")))
OFFSET_METHODS = tuple(name for name in METHODS if get_method(name).id_offset)
LOSSES = ("full", "sampled", "in_batch")
SAMPLES = ("sequences", "prefixes")  # what one training sample is; see TrainConfig
DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("constant", "cosine")  # the learning rate over the run, after warm-up
USER_ENCODERS = ("reference", "recbole")  # see UserEncoderConfig
USER_DEFAULTS = ("dropout", "variant")  # user-encoder fields a method's registry entry may set
PRECISIONS = ("auto", "fp32", "bf16")  # the frozen encoders' compute precision; see devices.compute_dtype


@dataclass(frozen=True)
class SideNetworkConfig:
    """IISAN's side network.

    Args:
        bottleneck: SANB bottleneck width.
        layers: encoder layer indices the side network reads (0 = embedding output);
            ``None`` applies ``layer_rule``.
        layer_rule: without explicit ``layers``: ``all`` (default: every layer; more accurate
            than LayerDrop on Amazon Scientific, see the README) or ``every_other`` (the
            paper's LayerDrop: every other layer counting back from the last, which for an
            even depth is "layer 0 and every other layer"). Either way a layer whose state
            is the same for every item (layer 0 under CLS pooling, the first token of a
            causal model) is skipped: a step spent on a constant adds nothing.
        modality: which towers feed the item embedding: ``text``, ``image``, ``intra``
            (text + image), ``inter`` (the fused tower only) or ``intra_inter`` (all three);
            ``auto`` (default): ``intra_inter`` when the cache holds both encoders' states,
            else the one it holds (:meth:`resolved`, when the run is assembled).
        gate_temperature: gates are ``sigmoid(w / temperature)``.
        inter_layers: IISAN-Versa, for encoders of different depth: the inter-modal tower
            takes as many steps as the shallower encoder has selected layers, and reads the
            deeper one's selected layers split into that many contiguous groups, one
            representative each: the group's ``last`` layer (default) or its ``mean``;
            ``truncate`` instead drops the deeper encoder's extra layers (a naive control).
            No effect when the depths match.
        dtl_to: IISAN-Versa, for encoders of different width: the dimension
            transformation layer maps the wider encoder's states to the ``smaller`` width
            (default) or the narrower one's to the ``larger`` width before inter-modal
            fusion. No effect (and no parameters) when the widths match.
        dtl: ``shared`` (one map per modality for every inter step) or ``per_step`` (one
            per step, as the reference's Versa scripts).
        text_layers / image_layers: this encoder's layers, for both its intra tower and
            the inter tower (overrides ``layers`` and ``layer_rule``).
        text_steps / image_steps: IISAN-Versa's group layer-dropping per encoder: split its
            non-constant layers into this many contiguous groups and read the last layer
            of each (e.g. 6 of an 80-layer LLM's 81 states), for the intra and the inter
            tower alike: evenly spaced, counting back from the last layer. Overrides
            ``layer_rule``; an explicit list wins over it.
        head: each tower's head: ``wide`` is ``Linear(D, D) -> Linear(D, d)`` (the
            paper's), ``compact`` is ``Linear(D, d) -> Linear(d, d)`` (the reference's
            Versa draft; 67M parameters fewer at D = 8192); ``auto`` is compact for
            encoders at least :data:`COMPACT_HEAD_FROM` wide, wide below.
        text_bottleneck / image_bottleneck: this modality's SANB width (default:
            ``bottleneck``, which the inter tower always uses).
    """

    bottleneck: int = 64
    layers: tuple[int, ...] | None = None
    layer_rule: str = "all"
    modality: str = "auto"
    gate_temperature: float = 0.1
    inter_layers: str = "last"
    dtl_to: str = "smaller"
    dtl: str = "shared"
    text_layers: tuple[int, ...] | None = None
    image_layers: tuple[int, ...] | None = None
    text_steps: int | None = None
    image_steps: int | None = None
    head: str = "auto"
    text_bottleneck: int | None = None
    image_bottleneck: int | None = None

    def __post_init__(self) -> None:
        if self.bottleneck <= 0:
            raise ConfigError(f"bottleneck must be positive, got {self.bottleneck}")
        if self.modality not in MODALITIES:
            raise ConfigError(f"modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}")
        check_layer_list("layers", self.layers)
        if self.layer_rule not in LAYER_RULES:
            raise ConfigError(f"layer_rule must be one of {', '.join(LAYER_RULES)}, got {self.layer_rule!r}")
        if self.gate_temperature <= 0:
            raise ConfigError("gate_temperature must be positive")
        if self.inter_layers not in INTER_LAYERS:
            raise ConfigError(f"inter_layers must be one of {', '.join(INTER_LAYERS)}, got {self.inter_layers!r}")
        if self.dtl_to not in DTL_TARGETS:
            raise ConfigError(f"dtl_to must be one of {', '.join(DTL_TARGETS)}, got {self.dtl_to!r}")
        if self.dtl not in DTL_KINDS:
            raise ConfigError(f"dtl must be one of {', '.join(DTL_KINDS)}, got {self.dtl!r}")
        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        for modality in ("text", "image"):
            check_layer_list(f"{modality}_layers", getattr(self, f"{modality}_layers"))
            for name in (f"{modality}_steps", f"{modality}_bottleneck"):
                if getattr(self, name) is not None and getattr(self, name) < 1:
                    raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")

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
        return replace(self, modality="intra_inter" if both else ("image" if "image" in available else "text"))

    def selected_layers(self, num_layers: int, constant: tuple[int, ...] = (), modality: str | None = None,
                        available: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """Indices into ``num_layers`` (= L + 1) layers of ``modality``'s encoder.

        ``constant``: layers whose state is the same for every item, never chosen by a rule
        or a step count (explicit lists are kept); ``available``: the layers the cache
        stored (default: all).
        """
        available = tuple(range(num_layers)) if available is None else tuple(available)
        explicit = getattr(self, f"{modality}_layers", None) if modality else None
        explicit = explicit if explicit is not None else self.layers
        if explicit is not None:
            missing = sorted(set(explicit) - set(available))
            if missing:
                where = (f"the encoder has layers 0..{num_layers - 1}" if len(available) == num_layers
                         else f"the cache stored only layers {', '.join(map(str, available))}")
                raise ConfigError(f"layer {missing[-1]} does not exist: {where}")
            return tuple(sorted(set(explicit)))
        candidates = [i for i in available if i not in constant]
        if not candidates:
            raise ConfigError("every cached layer holds the same state for every item: nothing to learn from "
                              "(was the cache built from empty texts?)")
        steps = getattr(self, f"{modality}_steps", None) if modality else None
        if steps is not None:
            if steps > len(candidates):
                raise ConfigError(f"{modality}_steps {steps}: the {modality} encoder has only {len(candidates)} "
                                  "usable layers")
            # Groups mirrored, the larger ones first: the picks count back from the last layer
            # at an even stride (13 states in 3 steps: 4, 8, 12), like LayerDrop's rule.
            last = len(candidates) - 1
            return tuple(sorted(candidates[last - group[0]] for group in even_groups(len(candidates), steps)))
        if self.layer_rule == "every_other":  # every other layer counting back from the last
            candidates = [i for i in candidates if (available[-1] - i) % 2 == 0]
        return tuple(candidates)

    def bottleneck_for(self, modality: str) -> int:
        """The SANB width of ``modality``'s tower (``inter`` uses ``bottleneck``)."""
        return getattr(self, f"{modality}_bottleneck", None) or self.bottleneck

    def head_for(self, width: int, dim: int) -> str:
        """``compact`` or ``wide`` for a tower of width ``width`` and embeddings of ``dim``."""
        if self.head != "auto":
            return self.head
        return "compact" if width >= COMPACT_HEAD_FROM else "wide"


def check_layer_list(name: str, layers: tuple[int, ...] | None) -> None:
    """``None`` (a rule decides) or a non-empty list of layer indices, 0 being the embedding output.

    Raises:
        ConfigError: an empty list or a negative index.
    """
    if layers is not None and (not layers or min(layers) < 0):
        raise ConfigError(f"{name} must be non-negative layer indices, got {layers}")


def even_groups(count: int, groups: int) -> list[tuple[int, ...]]:
    """Split positions ``0..count-1`` into ``groups`` contiguous groups of near-equal size,
    the larger ones last (so the last group ends at the final layer)."""
    if not 1 <= groups <= count:
        raise ValueError(f"cannot split {count} layers into {groups} groups")
    small, extra = divmod(count, groups)
    sizes = [small] * (groups - extra) + [small + 1] * extra
    starts = [sum(sizes[:i]) for i in range(groups)]
    return [tuple(range(start, start + size)) for start, size in zip(starts, sizes)]


@dataclass(frozen=True)
class UserEncoderConfig:
    """The SASRec-style user encoder (and the item embedding width ``dim``).

    ``variant`` picks the details that differ between the two SASRec implementations
    this project is compared with: ``reference`` (IISAN's reference code: ReLU feed-forward,
    xavier-normal initialisation, LayerNorm eps 1e-6, bias-free attention projections) or
    ``recbole`` (RecBole's SASRec: GELU, normal(0, 0.02) initialisation, eps 1e-12, biased
    projections). The architecture is otherwise the same. ``recbole`` is the default: it
    scored higher on validation for both IISAN and the id model (the README has the figures).
    """

    dim: int = 64
    blocks: int = 2
    heads: int = 2
    dropout: float = 0.1
    max_seq_len: int = 10
    variant: str = "recbole"

    def __post_init__(self) -> None:
        if self.variant not in USER_ENCODERS:
            raise ConfigError(f"user encoder must be one of {', '.join(USER_ENCODERS)}, got {self.variant!r}")
        if self.dim % self.heads:
            raise ConfigError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")



@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Args:
        method: ``iisan`` (side network), ``frozen`` (a linear head on the cached last
            layer, no side network), ``id`` (SASRec with item-id embeddings), or a baseline
            that runs the encoders on raw content and trains them: ``fft`` (all weights),
            ``adapter`` (Houlsby adapters of width ``side.bottleneck``), ``lora`` (rank
            ``lora_rank`` on the attention projections), ``bitfit`` (biases). Those read the
            encoder names and settings from the cache manifest, never its states.
        mode: ``cached`` reads the hidden-state cache (encoders never loaded);
            ``uncached`` runs the frozen encoders in the graph under ``no_grad``.
        lr: peak learning rate of the user encoder, heads and fusion; ``side_lr`` of the
            SANB blocks and gates (for the encoder baselines: of the trained encoder
            parameters). The reference used 2e-4 and 1e-4 for 100 epochs on a GPU; 1e-3
            (RecBole's SASRec default) reaches a better validation NDCG@10 within a
            patience-5 budget, and on small catalogues (a few steps per epoch) the
            reference rates stop early before learning anything.
        patience: stop after this many epochs without a better validation NDCG@10.
        schedule: every learning rate over the run: ``constant``, or ``cosine`` (from its
            value down to zero at step ``epochs`` x steps per epoch; early stopping may end
            the run before that). ``warmup_epochs`` (may be fractional) first raise it
            linearly from zero, in either schedule. One warm-up epoch and a cosine over 30
            epochs scored higher on validation than a constant rate for 50 (README); runs
            saved before schedules existed read as constant.
        loss: the next-item softmax's candidates: ``full`` (every item of the catalogue,
            RecBole's cross-entropy; the item tower embeds the whole catalogue at every
            step), ``sampled`` (the batch's items plus ``negatives`` drawn in proportion to
            popularity, with log-popularity correction) or ``in_batch`` (the reference's:
            every item slot of the batch, with log-popularity correction). ``sampled`` and
            ``in_batch`` mask the user's own items other than the positive.
        negatives: extra negatives per step for ``loss="sampled"``.
        samples: what one training sample (a row of ``batch_size``) is: ``sequences``
            (the user's window, a target at every position: SASRec's paper and the
            reference) or ``prefixes`` (every prefix of every window on its own, its
            target in the last slot: RecBole's SASRec). The targets are the same; each
            prefix draws its own dropout and batch. ``id`` trains on prefixes, 256 a batch
            (higher on validation than sequences for it; README).
        id_offset: add a learned per-item vector, zero at the start, to each
            training-catalogue item's content embedding; items added later stay content
            only (see :mod:`iisan.models.id_offset`). Applies to the cached content methods
            (``iisan``, ``frozen``); always off for the others.
        blend: after training, blend each score with the content floor's and add a prior
            for cold and tail items, weighed on the validation split
            (:mod:`iisan.models.blend`); what lets a trained content model rank new and
            rare items. Applies to ``iisan`` and ``frozen``; always off for the others.
        id_offset_lr: learning rate of those offsets; 10x below ``lr`` by default, so that
            they do not memorise the training items before the content tower has learned
            (at ``lr`` validation peaks after 4-5 epochs, then falls).
        precision: the compute precision of encoders that run in the graph (the encoder
            baselines): ``auto`` (bfloat16 autocast on a GPU that supports it, else
            float32), ``fp32`` or ``bf16``. ``uncached`` mode runs its frozen encoders at
            the precision the cache was built with; the side network is always float32.
    """

    method: str = "iisan"
    mode: str = "cached"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    side_lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    patience: int = 5
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    loss: str = "in_batch"
    negatives: int = 1024
    samples: str = "sequences"
    id_offset: bool = True
    id_offset_lr: float = 1e-4
    blend: bool = True
    seed: int = 42
    eval_batch_size: int = 1024
    include_history: bool = False
    lora_rank: int = 8
    precision: str = "auto"
    side: SideNetworkConfig = field(default_factory=SideNetworkConfig)
    user: UserEncoderConfig = field(default_factory=UserEncoderConfig)

    def __post_init__(self) -> None:
        get_method(self.method)  # raises ConfigError naming the registered methods
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "patience", "lora_rank"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.samples not in SAMPLES:
            raise ConfigError(f"samples must be one of {', '.join(SAMPLES)}, got {self.samples!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not get_method(self.method).id_offset:  # not applicable: the saved config says it was not used
            object.__setattr__(self, "id_offset", False)
        if not get_method(self.method).blend:
            object.__setattr__(self, "blend", False)
        if self.negatives < 0:
            raise ConfigError(f"negatives must be 0 or more, got {self.negatives}")
        if self.lr <= 0 or self.side_lr <= 0 or self.id_offset_lr <= 0:
            raise ConfigError("learning rates must be positive")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def for_method(cls, method: str, user_changes: dict[str, Any] | None = None, **changes: Any) -> TrainConfig:
        """A config with ``method``'s own defaults (its registry entry's), then ``changes``.

        ``user_changes`` overrides single fields of the user encoder (over the method's own:
        ``dropout``, ``variant``); ``changes["user"]`` replaces it whole."""
        own = dict(get_method(method).defaults)
        user = {key: own.pop(key) for key in USER_DEFAULTS if key in own}
        if "user" not in changes and (user or user_changes):
            changes["user"] = UserEncoderConfig(**{**user, **(user_changes or {})})
        return cls(method=method, **{**own, **changes})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        # runs saved before these options existed: no offset, no blend, encoders in float32, a constant
        # learning rate, the reference's user encoder, whole sequences
        data = {"id_offset": False, "blend": False, "precision": "fp32", "schedule": "constant", "warmup_epochs": 0.0,
                "samples": "sequences", **data}
        if data.get("id_offset_lr") is None:
            data.pop("id_offset_lr", None)
        side = {"head": "wide", **data.get("side", {})}  # runs saved before head existed: the paper's
        for key in ("layers", "text_layers", "image_layers"):
            if side.get(key) is not None:
                side[key] = tuple(side[key])
        user = {"variant": "reference", **data.get("user", {})}  # runs saved before variants existed
        return cls(**{**data, "side": SideNetworkConfig(**side), "user": UserEncoderConfig(**user)})
