"""Scoring every user against every item, in bounded-memory chunks."""

from __future__ import annotations

import numpy as np
import torch

from iisan.data.split import EvalSplit
from iisan.evaluate.metrics import metrics_from_ranks, pessimistic_ranks
from iisan.models.features import FeatureSource
from iisan.models.recommender import SequentialRecommender

ITEM_CHUNK = 4096
DEFAULT_KS = (5, 10, 20)


@torch.no_grad()
def item_embeddings(model: SequentialRecommender, source: FeatureSource, num_items: int) -> torch.Tensor:
    """Embeddings of every item ``[N + 1, d]`` (row 0, padding, is zero), computed once."""
    model.eval()
    chunks = [model.embed_items(source.features(np.arange(s, min(s + ITEM_CHUNK, num_items + 1))))
              for s in range(0, num_items + 1, ITEM_CHUNK)]
    return torch.cat(chunks)


@torch.no_grad()
def user_vectors(model: SequentialRecommender, items: torch.Tensor, inputs: np.ndarray) -> torch.Tensor:
    """The user encoder's last-position output for left-padded ``inputs [U, L]``."""
    model.eval()
    ids = torch.from_numpy(inputs)
    return model.user(items[ids], ids != 0)[:, -1]


@torch.no_grad()
def evaluate_split(
    model: SequentialRecommender,
    items: torch.Tensor,
    split: EvalSplit,
    ks: tuple[int, ...] = DEFAULT_KS,
    batch_size: int = 1024,
    include_history: bool = False,
) -> dict[str, float]:
    """Full-ranking HR@K, NDCG@K and MRR over all users of ``split``.

    Users are scored in chunks of ``batch_size`` so memory stays ``batch_size x N``
    whatever the catalogue size. Unless ``include_history``, each user's history is
    excluded from ranking, as in the reference; a target that repeats a history item is
    excluded too and counts as a miss.
    """
    ranks = []
    users = len(split.targets)
    for start in range(0, users, batch_size):
        chunk = np.arange(start, min(start + batch_size, users))
        scores = user_vectors(model, items, split.inputs[chunk]) @ items.T  # [chunk, N + 1]
        scores[:, 0] = -torch.inf  # padding is never recommended
        if not include_history:
            rows, cols = split.history_pairs(chunk)
            scores[torch.from_numpy(rows), torch.from_numpy(cols)] = -torch.inf
        ranks.append(pessimistic_ranks(scores, torch.from_numpy(split.targets[chunk])))
    return metrics_from_ranks(torch.cat(ranks), ks)
