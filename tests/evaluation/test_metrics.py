"""Chunked full ranking against a brute-force per-user reference, ties and history included."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iisan.data.split import EvalSplit
from iisan.evaluation.metrics import metrics_from_ranks, pessimistic_ranks
from iisan.evaluation.ranking import evaluate_split
from iisan.models.sequential import SequentialRecommender


def brute_force(scores: list[list[float]], targets, histories, ks):
    """Per user: excluded (a history item) or unscorable targets are misses at every K;
    otherwise the rank counts the items scoring higher and the other items tying."""
    ranks = []
    for row, target, history in zip(scores, targets, histories):
        if target in history or math.isnan(row[target]):
            ranks.append(None)
            continue
        candidates = [i for i in range(1, len(row)) if i not in history]
        better = sum(1 for i in candidates if row[i] > row[target])
        tied = sum(1 for i in candidates if row[i] == row[target] and i != target)
        ranks.append(better + tied)
    out = {}
    for k in ks:
        out[f"hr@{k}"] = np.mean([r is not None and r < k for r in ranks])
        out[f"ndcg@{k}"] = np.mean([1 / math.log2(r + 2) if r is not None and r < k else 0.0 for r in ranks])
        out[f"mrr@{k}"] = np.mean([1 / (r + 1) if r is not None and r < k else 0.0 for r in ranks])
    out["mrr"] = np.mean([1 / (r + 1) if r is not None else 0.0 for r in ranks])
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


def _random_case(seed: int, num_items: int, users: int, length: int):
    """A small catalogue with many ties, histories of 1..N items, targets anywhere (often
    in the history), and the split that ranks them."""
    rng = np.random.default_rng(seed)
    items = torch.from_numpy(rng.integers(-1, 2, size=(num_items + 1, 3)).astype(np.float32))
    items[0] = 0
    flat, starts, ends = [], [], []
    for _ in range(users):
        history = rng.choice(np.arange(1, num_items + 1), size=rng.integers(1, num_items + 1), replace=False)
        starts.append(len(flat))
        flat.extend(int(i) for i in history)
        ends.append(len(flat))
    inputs = np.array([([0] * length + flat[s:e])[-length:] for s, e in zip(starts, ends)])
    targets = rng.integers(1, num_items + 1, size=users)
    return items, EvalSplit(inputs, targets, np.array(flat), np.array(starts), np.array(ends))


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), num_items=st.integers(1, 12), users=st.integers(1, 9),
       length=st.integers(1, 4), ks=st.lists(st.integers(1, 20), min_size=1, max_size=3, unique=True),
       chunk=st.integers(1, 5), include_history=st.booleans())
def test_full_ranking_matches_brute_force_on_any_small_catalogue(seed, num_items, users, length, ks, chunk,
                                                                   include_history):
    """K may exceed the catalogue: an excluded target is still never a hit (issue 28)."""
    items, split = _random_case(seed, num_items, users, length)
    model = SequentialRecommender(torch.nn.Identity(), SumOfItems())
    ks = tuple(sorted(ks))
    counts = np.arange(num_items + 1) % 7  # every slice, for what the top lists reach
    result = evaluate_split(model, items, split, ks=ks, batch_size=chunk, include_history=include_history,
                            item_counts=counts)
    reach = result["exposure@10"]  # the catalogue may hold fewer than 10 items: shorter lists
    assert reach["k"] == min(10, num_items + 1) and 0 <= reach["reached"] <= 1
    places = sum(reach[name]["places"] for name in ("cold", "tail", "head"))
    assert places == pytest.approx(1, abs=1e-3) or (places == 0 and reach["reached"] == 0)
    scores = items[torch.from_numpy(split.inputs)].sum(dim=1) @ items.T
    histories = [[] if include_history else list(split.flat[s:e])
                 for s, e in zip(split.history_start, split.history_end)]
    expected = brute_force([[float(v) for v in row] for row in scores], split.targets, histories, ks)
    for key, value in expected.items():
        assert abs(result[key] - value) < 1e-9, key


def test_an_excluded_target_is_a_miss_when_the_catalogue_is_smaller_than_k():
    """The reported case: 8 items, K = 10, every target in its user's history."""
    items = torch.eye(9)
    inputs = np.array([[1, 2, 3], [4, 5, 6]])
    split = EvalSplit(inputs, np.array([2, 6]), inputs.reshape(-1), np.array([0, 3]), np.array([3, 6]))
    model = SequentialRecommender(torch.nn.Identity(), SumOfItems())
    result = evaluate_split(model, items, split, ks=(5, 10))
    assert result["hr@10"] == 0.0 and result["ndcg@10"] == 0.0 and result["mrr"] == 0.0
    assert evaluate_split(model, items, split, ks=(10,), include_history=True)["hr@10"] == 1.0
