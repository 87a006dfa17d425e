"""The vectorised in-batch loss against a slow loop written position by position."""

from __future__ import annotations

import math

import torch

from iisan.train.loss import MASKED, in_batch_softmax_loss, log_popularity


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
            top = max(logits)
            log_sum = top + math.log(sum(math.exp(v - top) for v in logits))
            losses.append(log_sum - logits[positive])
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
