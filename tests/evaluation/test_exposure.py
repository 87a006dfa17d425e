"""What the top-k lists reach: shares of places, catalogue and items reached per item slice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iisan.data.split import EvalSplit
from iisan.evaluation.exposure import exposure
from iisan.evaluation.ranking import evaluate_split
from iisan.models.sequential import SequentialRecommender
from tests.evaluation.test_metrics import SumOfItems


def test_exposure_counts_places_catalogue_and_reach_per_item_slice():
    # items 1..6 with training counts: 1, 2 cold; 3, 4, 5 tail; 6 head
    counts = np.array([0, 0, 0, 1, 4, 2, 9])
    top = torch.tensor([[6, 3, 1], [6, 3, 0], [6, 4, 3]])  # 0: a place no item was left for
    out = exposure(top, counts)
    assert out["k"] == 3 and out["reached"] == round(4 / 6, 4)  # items 1, 3, 4, 6
    assert out["cold"] == {"places": round(1 / 8, 4), "catalogue": round(2 / 6, 4), "reached": 0.5}
    assert out["tail"] == {"places": round(4 / 8, 4), "catalogue": 0.5, "reached": round(2 / 3, 4)}
    assert out["head"] == {"places": round(3 / 8, 4), "catalogue": round(1 / 6, 4), "reached": 1.0}


def test_evaluate_split_reports_the_exposure_of_its_own_top_lists():
    rng = np.random.default_rng(3)
    users, num_items, length = 40, 30, 3
    items = torch.from_numpy(rng.normal(size=(num_items + 1, 5)).astype(np.float32))  # no ties
    items[0] = 0
    histories = [rng.choice(np.arange(1, num_items + 1), size=rng.integers(1, 4), replace=False) for _ in range(users)]
    ends = np.cumsum([len(h) for h in histories])
    flat = np.concatenate(histories)
    inputs = np.array([([0] * length + list(h))[-length:] for h in histories])
    split = EvalSplit(inputs, rng.integers(1, num_items + 1, size=users), flat, ends - [len(h) for h in histories], ends)
    counts = rng.integers(0, 8, size=num_items + 1)
    model = SequentialRecommender(torch.nn.Identity(), SumOfItems())

    result = evaluate_split(model, items, split, batch_size=7, item_counts=counts)  # ragged chunks
    scores = (items[torch.from_numpy(inputs)].sum(dim=1) @ items.T).numpy()
    scores[:, 0] = -np.inf
    for user, history in enumerate(histories):
        scores[user, history] = -np.inf
    expected = exposure(torch.from_numpy(np.argsort(-scores, axis=1)[:, :10]), counts)
    assert result["exposure@10"] == expected
    assert "exposure@10" not in evaluate_split(model, items, split)  # only when item counts are given
    assert sum(result["exposure@10"][s]["places"] for s in ("cold", "tail", "head")) == pytest.approx(1, abs=1e-3)
