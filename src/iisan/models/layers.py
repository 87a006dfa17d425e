"""Which encoder layers a side network reads, and which head each tower gets: decided from
the side network's options (:class:`~iisan.config.SideNetworkConfig`) and the encoder's
shape."""

from __future__ import annotations

from iisan.config import SideNetworkConfig
from iisan.errors import ConfigError

# head="auto" is compact from this encoder width up (LLMs: 2048-8192), wide below (BERT-
# and ViT-sized encoders, where the paper's wide head is measured).
COMPACT_HEAD_FROM = 1024


def select_layers(side: SideNetworkConfig, num_layers: int, constant: tuple[int, ...] = (),
                  modality: str | None = None, available: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Indices into ``num_layers`` (= L + 1) layers of ``modality``'s encoder.

    ``constant``: layers whose state is the same for every item, never chosen by a rule
    or a step count (explicit lists are kept); ``available``: the layers the cache
    stored (default: all).
    """
    available = tuple(range(num_layers)) if available is None else tuple(available)
    explicit = getattr(side, f"{modality}_layers", None) if modality else None
    explicit = explicit if explicit is not None else side.layers
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
    steps = getattr(side, f"{modality}_steps", None) if modality else None
    if steps is not None:
        if steps > len(candidates):
            raise ConfigError(f"{modality}_steps {steps}: the {modality} encoder has only {len(candidates)} "
                              "usable layers")
        # Groups mirrored, the larger ones first: the picks count back from the last layer
        # at an even stride (13 states in 3 steps: 4, 8, 12), like LayerDrop's rule.
        last = len(candidates) - 1
        return tuple(sorted(candidates[last - group[0]] for group in even_groups(len(candidates), steps)))
    if side.layer_rule == "every_other":  # every other layer counting back from the last
        candidates = [i for i in candidates if (available[-1] - i) % 2 == 0]
    return tuple(candidates)


def head_kind(side: SideNetworkConfig, width: int) -> str:
    """``compact`` or ``wide`` for a tower reading states ``width`` wide."""
    if side.head != "auto":
        return side.head
    return "compact" if width >= COMPACT_HEAD_FROM else "wide"


def even_groups(count: int, groups: int) -> list[tuple[int, ...]]:
    """Split positions ``0..count-1`` into ``groups`` contiguous groups of near-equal size,
    the larger ones last (so the last group ends at the final layer)."""
    if not 1 <= groups <= count:
        raise ValueError(f"cannot split {count} layers into {groups} groups")
    small, extra = divmod(count, groups)
    sizes = [small] * (groups - extra) + [small + 1] * extra
    starts = [sum(sizes[:i]) for i in range(groups)]
    return [tuple(range(start, start + size)) for start, size in zip(starts, sizes)]
