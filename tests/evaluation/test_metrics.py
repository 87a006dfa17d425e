"""Chunked full ranking against a brute-force per-user reference, ties and history included."""

from __future__ import annotations

import math

import numpy as np
import torch

from iisan.data.split import EvalSplit
from iisan.evaluation.metrics import metrics_from_ranks, pessimistic_ranks
from iisan.evaluation.runner import evaluate_split
from iisan.models.recommender import SequentialRecommender


def brute_force(scores: list[list[float]], targets, histories, ks):
    ranks = []
    for row, target, history in zip(scores, targets, histories):
        row = list(row)
        row[0] = -math.inf
        for item in history:
            row[item] = -math.inf
        better = sum(1 for i, s in enumerate(row) if s > row[target])
        tied = sum(1 for i, s in enumerate(row) if s == row[target] and i != target)
        ranks.append(better + tied)
    out = {}
    for k in ks:
        out[f"hr@{k}"] = np.mean([r < k for r in ranks])
        out[f"ndcg@{k}"] = np.mean([1 / math.log2(r + 2) if r < k else 0.0 for r in ranks])
        out[f"mrr@{k}"] = np.mean([1 / (r + 1) if r < k else 0.0 for r in ranks])
    out["mrr"] = np.mean([1 / (r + 1) for r in ranks])
    return out


def test_pessimistic_ties():
    scores = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.5]])
    assert pessimistic_ranks(scores, torch.tensor([2])).item() == 2  # two others tie with it
    assert pessimistic_ranks(scores, torch.tensor([4])).item() == 3


class SumOfItems(torch.nn.Module):
    """A stand-in user tower: the user vector is the sum of the input item embeddings."""

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return items.cumsum(dim=1)


def test_evaluate_split_matches_brute_force_with_chunks_ties_and_history():
    rng = np.random.default_rng(0)
    users, num_items, dim, length = 37, 25, 4, 3
    items = torch.from_numpy(rng.integers(-1, 2, size=(num_items + 1, dim)).astype(np.float32))  # many ties
    items[0] = 0
    flat, starts, ends = [], [], []
    for _ in range(users):
        history = rng.choice(np.arange(1, num_items + 1), size=rng.integers(2, 5), replace=False)
        starts.append(len(flat))
        flat.extend(int(i) for i in history)
        ends.append(len(flat))
    inputs = np.array([([0] * length + flat[s:e])[-length:] for s, e in zip(starts, ends)])
    targets = rng.integers(1, num_items + 1, size=users)
    targets[:5] = [flat[s] for s in starts[:5]]  # some targets repeat a history item: excluded, so misses
    split = EvalSplit(inputs, targets, np.array(flat), np.array(starts), np.array(ends))
    model = SequentialRecommender(torch.nn.Identity(), SumOfItems())

    ks = (1, 5, 10)
    result = evaluate_split(model, items, split, ks=ks, batch_size=8)  # 8 does not divide 37: a ragged chunk
    user_vectors = items[torch.from_numpy(inputs)].sum(dim=1)
    expected = brute_force([[float(v) for v in row] for row in user_vectors @ items.T],
                           targets, [flat[s:e] for s, e in zip(starts, ends)], ks)
    for key, value in expected.items():
        assert abs(result[key] - value) < 1e-9, key
    with_history = evaluate_split(model, items, split, ks=ks, batch_size=8, include_history=True)
    assert with_history["hr@10"] != result["hr@10"]


def test_metrics_from_ranks():
    out = metrics_from_ranks(torch.tensor([0, 1, 9, 10]), (10,))
    assert out["hr@10"] == 0.75
    assert abs(out["ndcg@10"] - (1 + 1 / math.log2(3) + 1 / math.log2(11)) / 4) < 1e-12
    assert abs(out["mrr"] - (1 + 1 / 2 + 1 / 10 + 1 / 11) / 4) < 1e-12
    assert abs(out["mrr@10"] - (1 + 1 / 2 + 1 / 10) / 4) < 1e-12  # rank 11 is past the cut-off
