"""What the recommendations reach: how much of the catalogue the users' top-k lists hold,
and how their places split between new, rare and popular items.

Accuracy by target slice (:mod:`iisan.evaluation.slices`) says how well a model ranks the
items users went on to choose; exposure says what it puts in front of them. An item's slice
is read from its own count in the training part, with the thresholds of the target slices:
``cold`` items no training sample showed, ``tail`` ones shown 1 to 4 times, ``head`` the rest.
For each slice: its share of the places in the top-k lists, its share of the catalogue beside it (what
an even spread would give), and the share of its items that are in at least one list.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from iisan.config import SLICES

EXPOSURE_K = 10


def exposure(top: torch.Tensor, item_counts: np.ndarray) -> dict[str, Any]:
    """``{"k": k, "reached": r, "cold": {"places": p, "catalogue": c, "reached": r}, "tail": ...,
    "head": ...}`` for the lists ``top [U, k]`` (item ids, 0 for an empty place where fewer
    than k items could be ranked) of a catalogue whose items ``1..N`` occur
    ``item_counts[1:]`` times in the training part."""
    counts = torch.as_tensor(np.asarray(item_counts))[1:]
    places = top[top > 0].cpu().long() - 1  # the listed items, 0-based over items 1..N
    listed = torch.zeros(len(counts), dtype=torch.bool)
    listed[places] = True
    out: dict[str, Any] = {"k": top.shape[1], "reached": _share(listed.sum(), len(counts))}
    for name, low, high in SLICES:
        members = (counts >= low) & (counts <= high)
        out[name] = {"places": _share(members[places].sum(), len(places)),
                     "catalogue": _share(members.sum(), len(counts)),
                     "reached": _share((listed & members).sum(), members.sum())}
    return out


def _share(part: int | torch.Tensor, whole: int | torch.Tensor) -> float:
    return round(int(part) / int(whole), 4) if int(whole) else 0.0
