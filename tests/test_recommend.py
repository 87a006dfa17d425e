"""Recommender: history keys in, top-k keys out, consistent with evaluation."""

from __future__ import annotations

import pytest
import torch

from iisan.errors import ConfigError, UnknownItemError
from iisan.evaluate.runner import user_vectors
from iisan.recommend import Recommender


@pytest.fixture(scope="module")
def recommender(tiny_run) -> Recommender:
    return Recommender.load(tiny_run)


def test_top_k_matches_the_evaluation_scores(recommender):
    split = recommender.parts.splits.test
    inputs = split.inputs[:1]
    history = [recommender.keys[i] for i in inputs[0] if i]
    got = recommender.recommend(history, k=5, exclude_seen=False)
    scores = (user_vectors(recommender.parts.model, recommender.embeddings, inputs) @ recommender.embeddings.T)[0]
    scores[0] = -torch.inf
    expected = torch.topk(scores, 5).indices.tolist()
    assert [key for key, _ in got] == [recommender.keys[i] for i in expected]
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)


def test_seen_items_are_excluded_by_default(recommender):
    history = recommender.keys[1:6]
    keys = [key for key, _ in recommender.recommend(history, k=recommender.parts.dataset.num_items)]
    assert not set(history) & set(keys)
    assert len(keys) == recommender.parts.dataset.num_items - 5  # everything else, once


def test_only_the_last_max_seq_len_items_matter(recommender):
    long = recommender.keys[1:30]
    short = long[-recommender.max_seq_len:]
    assert recommender.recommend(long, k=3, exclude_seen=False) == recommender.recommend(short, k=3, exclude_seen=False)


def test_unknown_keys_are_named_or_skipped(recommender):
    known = recommender.keys[1:4]
    with pytest.raises(UnknownItemError, match="'nope'"):
        recommender.recommend([*known, "nope"])
    assert recommender.recommend([*known, "nope"], on_unknown="skip") == recommender.recommend(known)
    with pytest.raises(ConfigError, match="no known item"):
        recommender.recommend(["nope"], on_unknown="skip")
    with pytest.raises(ConfigError, match="k must be positive"):
        recommender.recommend(known, k=0)


def test_titles_follow_keys(recommender):
    items = recommender.parts.dataset.items
    key = items["key"][7]
    assert recommender.title(key) == items["text"][7]
    assert not recommender.embeddings[0].any()  # padding row
