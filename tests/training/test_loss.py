"""The vectorised losses against slow loops written position by position."""

from __future__ import annotations

import math

import numpy as np
import torch

from iisan.training.loss import (
    MASKED, candidate_softmax_loss, in_batch_softmax_loss, log_popularity, sampling_probabilities,
)


def cross_entropy(logits: list[float], positive: int) -> float:
    """``-log softmax(logits)[positive]``, written out."""
    top = max(logits)
    return top + math.log(sum(math.exp(v - top) for v in logits)) - logits[positive]


def loop_reference(user_states, item_embeddings, item_ids, input_mask, log_pop):
    batch, slots, _ = item_embeddings.shape
    candidates = item_embeddings.reshape(batch * slots, -1)
    candidate_ids = item_ids.reshape(-1).tolist()
    losses = []
    for b in range(batch):
        own = set(item_ids[b].tolist())
        for j in range(slots - 1):
            if not input_mask[b, j]:
                continue
            positive = b * slots + j + 1
            logits = []
            for c in range(batch * slots):
                value = float(user_states[b, j] @ candidates[c]) - float(log_pop[candidate_ids[c]])
                if c != positive and (candidate_ids[c] == 0 or candidate_ids[c] in own):
                    value = MASKED
                logits.append(value)
            losses.append(cross_entropy(logits, positive))
    return sum(losses) / len(losses)


def test_matches_loop_reference_with_padding_and_repeats():
    torch.manual_seed(0)
    # Left-padded rows; item 3 repeats inside user 0 and also appears for user 1.
    item_ids = torch.tensor([[0, 0, 3, 5, 3], [0, 2, 3, 4, 6], [1, 7, 8, 2, 9]])
    batch, slots = item_ids.shape
    embeddings = torch.randn(batch, slots, 8)
    user_states = torch.randn(batch, slots - 1, 8)
    input_mask = item_ids[:, :-1] != 0
    log_pop = log_popularity(torch.tensor([0, 5, 1, 9, 2, 2, 0, 4, 1, 3]))
    fast = in_batch_softmax_loss(user_states, embeddings, item_ids, input_mask, log_pop)
    slow = loop_reference(user_states, embeddings, item_ids, input_mask, log_pop)
    assert abs(float(fast) - slow) < 1e-4


def test_gradient_flows_to_both_towers():
    item_ids = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    embeddings = torch.randn(2, 4, 4, requires_grad=True)
    user_states = torch.randn(2, 3, 4, requires_grad=True)
    loss = in_batch_softmax_loss(user_states, embeddings, item_ids, item_ids[:, :-1] != 0, torch.zeros(8))
    loss.backward()
    assert embeddings.grad.abs().sum() > 0 and user_states.grad.abs().sum() > 0


def test_log_popularity_is_finite_for_unseen_items():
    values = log_popularity(torch.tensor([0, 0, 10]))
    assert torch.isfinite(values).all() and values[2] > values[1]


def candidate_loop_reference(user_states, table, table_ids, labels, input_mask, log_q, own_items):
    """Position by position: softmax over the distinct candidates, as candidate_softmax_loss."""
    losses = []
    for b in range(user_states.shape[0]):
        own = set(own_items[b].tolist()) if own_items is not None else set()
        for j in range(user_states.shape[1]):
            if not input_mask[b, j]:
                continue
            positive = int(labels[b, j])
            logits = []
            for c in range(table.shape[0]):
                value = float(user_states[b, j] @ table[c])
                if log_q is not None:
                    value -= float(log_q[c])
                item = int(table_ids[c])
                if c != positive and (item == 0 or item in own):
                    value = MASKED
                logits.append(value)
            losses.append(cross_entropy(logits, positive))
    return sum(losses) / len(losses)


def test_full_catalogue_loss_matches_loop_reference():
    """Every item is a candidate (RecBole's cross-entropy); only padding is excluded, so an
    item the user had before is an ordinary negative."""
    torch.manual_seed(1)
    item_ids = torch.tensor([[0, 0, 3, 5, 3], [0, 2, 3, 4, 6], [1, 7, 8, 2, 9]])
    table = torch.randn(10, 8)  # the whole catalogue, row = item id (row 0 padding)
    user_states = torch.randn(3, 4, 8)
    input_mask = item_ids[:, :-1] != 0
    fast = candidate_softmax_loss(user_states, table, torch.arange(10), item_ids[:, 1:], input_mask)
    slow = candidate_loop_reference(user_states, table, torch.arange(10), item_ids[:, 1:], input_mask, None, None)
    assert abs(float(fast) - slow) < 1e-4


def test_sampled_loss_matches_loop_reference():
    """Distinct candidates (the batch's items plus sampled ones), log-q corrected, the user's
    own items other than the positive masked."""
    torch.manual_seed(2)
    item_ids = torch.tensor([[0, 0, 3, 5, 3], [0, 2, 3, 4, 6], [1, 7, 8, 2, 9]])
    negatives = torch.tensor([11, 12, 3, 14])
    table_ids, inverse = torch.unique(torch.cat([item_ids.reshape(-1), negatives]), return_inverse=True)
    labels = inverse[: item_ids.numel()].view_as(item_ids)[:, 1:]
    table = torch.randn(len(table_ids), 8)
    log_q = log_popularity(torch.arange(15) % 4)[table_ids]
    user_states = torch.randn(3, 4, 8)
    input_mask = item_ids[:, :-1] != 0
    fast = candidate_softmax_loss(user_states, table, table_ids, labels, input_mask, log_q=log_q, own_items=item_ids)
    slow = candidate_loop_reference(user_states, table, table_ids, labels, input_mask, log_q, item_ids)
    assert abs(float(fast) - slow) < 1e-4


def test_sampling_probabilities_never_draw_padding():
    probabilities = sampling_probabilities(np.array([7, 0, 3]))
    assert probabilities[0] == 0 and abs(probabilities.sum() - 1) < 1e-12 and probabilities[2] > probabilities[1] > 0
