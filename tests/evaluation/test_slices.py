"""Popularity slices: thresholds, per-slice metrics, and the training counts behind them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iisan.data.split import split_sequences
from iisan.evaluation.metrics import metrics_from_ranks
from iisan.evaluation.slices import SLICE_NAMES, metrics_by_slice, slice_of


def test_thresholds_are_inclusive():
    assert list(slice_of(np.array([0, 1, 4, 5, 1000]))) == ["cold", "tail", "tail", "head", "head"]
    assert SLICE_NAMES == ("cold", "tail", "head")


def test_each_slice_is_the_metrics_of_its_users():
    rng = np.random.default_rng(3)
    ranks = torch.from_numpy(rng.integers(0, 30, size=200))
    counts = rng.choice([0, 1, 2, 3, 4, 5, 9, 40], size=200)
    result = metrics_by_slice(ranks, counts, (5, 10))
    names = slice_of(counts)
    for name in SLICE_NAMES:
        members = torch.from_numpy(names == name)
        assert result[name] == {**metrics_from_ranks(ranks[members], (5, 10)), "users": int(members.sum())}
    assert sum(s["users"] for s in result.values()) == 200


def test_an_empty_slice_says_so():
    result = metrics_by_slice(torch.tensor([0, 3]), np.array([7, 8]), (10,))
    assert result["cold"] == {"users": 0} and result["tail"] == {"users": 0}
    assert result["head"]["users"] == 2 and result["head"]["hr@10"] == 1.0


def test_target_counts_are_occurrences_in_every_training_part():
    sequences = [[1, 2, 3, 4, 5, 6], [2, 3, 2, 7, 1], [5, 5, 6, 2, 8, 3, 9]]
    flat = np.concatenate(sequences)
    offsets = np.cumsum([0, *map(len, sequences)])
    splits = split_sequences(flat, offsets, max_seq_len=10, num_items=9)
    training = [item for seq in sequences for item in seq[:-2]]  # every position but valid and test
    for split, position in ((splits.valid, -2), (splits.test, -1)):
        expected = [training.count(seq[position]) for seq in sequences]
        assert split.target_counts.tolist() == expected
    assert splits.test.target_counts.tolist() == [1, 1, 0]  # 6 and 1 once each, 9 never: cold


def test_evaluate_split_reports_slices_that_add_up(tiny_run):
    import json

    recorded = json.loads((tiny_run / "metrics.json").read_text())
    for split in ("valid", "test"):
        slices = recorded[split]["slices"]
        assert set(slices) == set(SLICE_NAMES)
        users = sum(s["users"] for s in slices.values())
        assert users > 0
        # The overall HR@10 is the user-weighted mean of the slices'.
        weighted = sum(s.get("hr@10", 0.0) * s["users"] for s in slices.values()) / users
        assert weighted == pytest.approx(recorded[split]["hr@10"], abs=1e-9)
