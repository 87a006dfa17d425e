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

from iisan.evaluation.slices import SLICES

EXPOSURE_K = 10


def exposure(top: torch.Tensor, item_counts: np.ndarray) -> dict[str, Any]:
    """``{"k": k, "reached": r, "cold": {"places": p, "catalogue": c, "reached": r}, "tail": ...,
    "head": ...}`` for the lists ``top [U, k]`` (item ids, 0 for an empty place where fewer
    than k items could be ranked) of a catalogue whose items ``1..N`` occur
    ``item_counts[1:]`` times in the training part."""
    counts = torch.as_tensor(np.asarray(item_counts))
    every_item = torch.ones(len(counts), dtype=torch.bool)
    out: dict[str, Any] = {"k": top.shape[1], "reached": shares(top, every_item)["reached"]}
    for name, low, high in SLICES:
        out[name] = shares(top, (counts >= low) & (counts <= high))
    return out


def shares(top: torch.Tensor, members: torch.Tensor) -> dict[str, float]:
    """For the items ``members`` marks (``[N + 1]`` booleans over item ids; padding, id 0, is
    never counted): their share of the lists' ``places``, of the ``catalogue`` (items 1..N),
    and the share of them ``reached``, in one list or more."""
    members = members.clone()
    members[0] = False
    places = top[top > 0].cpu().long()
    listed = torch.zeros(len(members), dtype=torch.bool)
    listed[places] = True
    return {"places": _share(members[places].sum(), len(places)),
            "catalogue": _share(members.sum(), len(members) - 1),
            "reached": _share((listed & members).sum(), members.sum())}


def _share(part: int | torch.Tensor, whole: int | torch.Tensor) -> float:
    return round(int(part) / int(whole), 4) if int(whole) else 0.0
