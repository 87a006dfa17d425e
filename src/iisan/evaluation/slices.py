"""Metrics per popularity slice: is the target new, rare or popular?

Each evaluated user falls in one slice by how often their target item occurs in the
training part of the sequences (every position of ``seq[:-2]``, so never a user's own
validation or test target):

- ``cold``: 0 times (an item no training sample showed: new, or only ever bought last);
- ``tail``: 1 to 4 times;
- ``head``: 5 times or more.

A content model is judged on ``cold`` and ``tail`` above all: an id model cannot rank
what it has not seen, and the reason to read titles and images is to reach those items.
"""

from __future__ import annotations

import numpy as np
import torch

from iisan.evaluation.metrics import metrics_from_ranks

# (name, fewest, most) training occurrences of the target, bounds inclusive.
SLICES: tuple[tuple[str, int, float], ...] = (("cold", 0, 0), ("tail", 1, 4), ("head", 5, float("inf")))
SLICE_NAMES = tuple(name for name, _, _ in SLICES)


def slice_of(counts: np.ndarray) -> np.ndarray:
    """The slice name of each training-occurrence count: ``[U]`` ints -> ``[U]`` strings."""
    counts = np.asarray(counts)
    names = np.empty(counts.shape, dtype=object)
    for name, low, high in SLICES:
        names[(counts >= low) & (counts <= high)] = name
    return names


def metrics_by_slice(ranks: torch.Tensor, target_counts: np.ndarray, ks: tuple[int, ...]) -> dict[str, dict]:
    """Every metric of :func:`~iisan.evaluation.metrics.metrics_from_ranks` per slice, with
    its number of users (``"users"``); a slice with no user holds ``{"users": 0}``.

    Args:
        ranks: ``[U]`` 0-based ranks of the users' targets.
        target_counts: ``[U]`` how often each user's target occurs in the training part.
    """
    counts = torch.as_tensor(np.asarray(target_counts), device=ranks.device)
    out: dict[str, dict] = {}
    for name, low, high in SLICES:
        members = (counts >= low) & (counts <= high)
        users = int(members.sum())
        out[name] = {**(metrics_from_ranks(ranks[members], ks) if users else {}), "users": users}
    return out
