"""The training methods, registered once each: what the item tower is, what it reads, where
its inputs come from, its own options and the defaults it trains with. Config validation,
CLI choices and help, the efficiency bench and model assembly all read this table; nothing
else branches on a method's name.

Adding a method is a module with a tower builder and one :func:`register_method` call::

    register_method(Method("mine", "my item tower", reads="states",
                           tower="iisan.models.mine:build_tower", defaults={"lr": 5e-4}))

where ``build_tower(config, context)`` returns an ``nn.Module`` mapping
:class:`~iisan.models.inputs.ItemFeatures` to item embeddings ``[n, d]`` (see
:class:`TowerContext` for what it is given). This module imports nothing heavy: towers are
imported when first built.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from iisan.errors import ConfigError

from iisan.method_options import ContentConfig, EncoderTuningConfig, KnnConfig, UnisrecConfig
from iisan.options import OptionSpec, describe_default

if TYPE_CHECKING:
    from torch import nn

# What a method reads -> the feature source it gets unless its entry names another.
SOURCES = {"ids": "iisan.features.sources:ids_only", "states": "iisan.features.sources:encoder_states",
           "raw": "iisan.features.sources:raw_content"}
READS = tuple(SOURCES)


@dataclass(frozen=True)
class Method:
    """One training method.

    Attributes:
        name: what ``--method`` and ``TrainConfig.method`` call it.
        summary: one line for ``--help``.
        reads: ``ids`` (item ids only), ``states`` (the encoders' per-layer hidden states,
            from the cache or run live), or ``raw`` (the tower runs and trains the encoders
            on raw content; the cache only names them).
        tower: ``"module:function"`` building the item tower.
        defaults: ``TrainConfig`` values this method trains with unless told otherwise
            (``dropout`` sets the user encoder's).
        options: the config class holding the method's own options
            (:mod:`iisan.method_options`), or ``None``.
        source: ``"module:function"`` building the feature source from a
            :class:`~iisan.features.sources.SourceContext` (default: the one for ``reads``).
        user: ``"module:function"`` building the user side from ``(config, item_tower)``
            instead of the SASRec user encoder (``None``: the user encoder). A method whose
            model then has no trainable parameter is evaluated without training.
        trains: False for a method with nothing to train (``knn``): it has no place in
            the efficiency benchmark.
    """

    name: str
    summary: str
    reads: str
    tower: str
    defaults: dict[str, Any] = field(default_factory=dict)
    options: type | None = None
    user: str | None = None
    trains: bool = True
    source: str | None = None

    @property
    def needs_cache(self) -> bool:
        """Whether it reads a cache: for its states, or for the names of the encoders it runs."""
        return self.reads != "ids"

    def build_tower(self, config, context: TowerContext) -> nn.Module:
        return _function(self.tower)(config, context)

    def build_user(self, config, tower: nn.Module) -> nn.Module | None:
        """The method's own user side, or ``None`` for the SASRec user encoder."""
        return _function(self.user)(config, tower) if self.user else None

    def build_source(self, context) -> Any:
        """Where its tower's inputs come from: a :class:`~iisan.features.FeatureSource` (see
        :mod:`iisan.features.sources`)."""
        return _function(self.source or SOURCES[self.reads])(context)


def _function(path: str):
    module, function = path.split(":")
    return getattr(importlib.import_module(module), function)


@dataclass
class TowerContext:
    """What a tower builder is given.

    Attributes:
        shapes: modality -> ``(L + 1, D)`` of the encoder's hidden states.
        num_items: N, the catalogue size (ids 1..N).
        constant: modality -> layers whose state is the same for every item (never read).
        layers: modality -> the layers to read, when already decided (a trained run's).
        encoders: modality -> the loaded encoder, for ``reads="raw"`` methods.
        poolings: modality -> the pooling the cache was built with.
        stored: modality -> the layers the cache holds, when it holds only some.
    """

    shapes: dict[str, tuple[int, int]]
    num_items: int
    constant: dict[str, tuple[int, ...]] | None = None
    layers: dict[str, tuple[int, ...]] | None = None
    encoders: dict[str, Any] = field(default_factory=dict)
    poolings: dict[str, str] = field(default_factory=dict)
    stored: dict[str, tuple[int, ...]] | None = None


_REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the table (its name must be new)."""
    if method.reads not in READS:
        raise ValueError(f"reads must be one of {', '.join(READS)}, got {method.reads!r}")
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is registered already")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"method must be one of {', '.join(_REGISTRY)}, got {name!r}") from None


def method_names(reads: str | None = None, trains: bool | None = None) -> tuple[str, ...]:
    """Registered names in registration order, optionally only those that read ``reads``
    and those that do (or do not) train."""
    return tuple(name for name, m in _REGISTRY.items()
                 if (reads is None or m.reads == reads) and (trains is None or m.trains == trains))


def methods_help() -> str:
    """``--method``'s help: every method registered now, with its summary."""
    return ("; ".join(f"{name}: {m.summary}" for name, m in _REGISTRY.items())
            + ". Methods that train the encoders read their names from the cache's manifest and run them on raw "
              "content.")


def option_classes() -> tuple[type, ...]:
    """The classes holding methods' own options, each once, in registration order."""
    return tuple(dict.fromkeys(m.options for m in _REGISTRY.values() if m.options is not None))


def users_of(options: type) -> str:
    """The methods whose own options ``options`` holds, as words (``"iisan and frozen"``)."""
    names = [name for name, m in _REGISTRY.items() if m.options is options]
    return " and ".join(names) if names else "no registered method"


register_method(Method(
    "iisan", "side network over every layer of the frozen encoders (the paper)", reads="states",
    tower="iisan.models.iisan:build_tower", options=ContentConfig))
register_method(Method(
    "frozen", "a linear head on the last layer's cached state, no side network", reads="states",
    tower="iisan.models.baselines.frozen:build_tower", options=ContentConfig))
# id follows RecBole's SASRec recipe (cross-entropy over the whole catalogue, dropout 0.5,
# patience 10, one sample per prefix, 256 a batch), which an id embedding table needs: with
# in-batch negatives a rare item is almost never a negative.
register_method(Method(
    "id", "SASRec with item-id embeddings, no content", reads="ids",
    tower="iisan.models.baselines.id:build_tower",
    defaults={"loss": "full", "patience": 10, "dropout": 0.5, "samples": "prefixes",
              "train_batch_size": 256}))
# The encoder baselines train encoder weights at side_lr; 1e-3 is too high for updating every
# weight of a pretrained encoder (README "Accuracy"), so fft uses 1e-4.
for _name, _summary, _defaults in (
    ("fft", "full fine-tuning of the encoders", {"side_lr": 1e-4}),
    ("adapter", "Houlsby adapters in the encoders", {}),
    ("lora", "LoRA on the encoders' attention projections", {}),
    ("bitfit", "the encoders' biases only", {}),
):
    register_method(Method(_name, _summary, reads="raw", defaults=_defaults, options=EncoderTuningConfig,
                           tower=f"iisan.models.baselines.embedded:{_name}_tower"))
# UniSRec fine-tunes with a cross-entropy over the whole catalogue on every prefix (the
# authors' code builds on RecBole), which these defaults follow.
register_method(Method(
    "unisrec", "the content peer (UniSRec, KDD 2022): a mixture of parametric whitenings over the frozen last "
               "text layer, --unisrec-setting transductive (plus item ids) or inductive",
    reads="states", tower="iisan.models.baselines.unisrec:build_tower",
    user="iisan.models.baselines.unisrec:build_user", options=UnisrecConfig,
    defaults={"loss": "full", "samples": "prefixes", "train_batch_size": 256}))
register_method(Method(
    "knn", "the content-only floor: cosine of frozen last-layer states to the history's, no training",
    reads="states", tower="iisan.models.baselines.knn:build_tower",
    user="iisan.models.baselines.knn:build_user", options=KnnConfig, trains=False))


def describe_train_default(spec: OptionSpec) -> str:
    """A training option's default as ``--help`` and the reference show it: the methods that
    train with their own value, then the rest (``"10 for id, 5 otherwise"``)."""
    own = [f"{describe_default(dataclasses.replace(spec, default=method.defaults[spec.name]))} for {name}"
           for name, method in _REGISTRY.items() if spec.name in method.defaults]
    return ", ".join([*own, f"{describe_default(spec)} otherwise"]) if own else describe_default(spec)
