"""Next-item softmax losses: the reference's in-batch softmax with log-popularity correction
(vectorised), and a softmax over distinct candidates (the whole catalogue, or the batch's
items plus sampled negatives).

For a batch of ``B`` users with ``L + 1`` item slots each, every user position ``(b, j)``
with a target scores all ``B * (L + 1)`` items in the batch. Its positive is the next
item, slot ``(b, j + 1)``. Two kinds of candidates are masked out:

- padding slots (item id 0);
- every slot, in any user's row, that holds an item occurring anywhere in user ``b``'s
  own sequence, except the positive slot itself. This rule covers other occurrences
  of the positive, so an item the user also bought is never counted as a negative.

Logits subtract ``log p(item)`` (popularity in the training data): in-batch negatives
are sampled in proportion to popularity, and the correction removes that bias (as in
the reference's ``debias_logits``).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.nn import functional as F

from iisan.distributed import LOCAL, Workers

MASKED = -1e4


def log_popularity(counts: torch.Tensor) -> torch.Tensor:
    """``log`` of add-one smoothed popularity ``[N + 1]``; smoothing keeps unseen items finite."""
    smoothed = counts.double() + 1.0
    return (smoothed / smoothed.sum()).log().float()


def in_batch_softmax_loss(
    user_states: torch.Tensor,
    item_embeddings: torch.Tensor,
    item_ids: torch.Tensor,
    input_mask: torch.Tensor,
    log_pop: torch.Tensor,
    workers: Workers = LOCAL,
) -> torch.Tensor:
    """Mean cross-entropy over real positions.

    Args:
        user_states: ``[B, L, d]`` user-encoder outputs at input positions.
        item_embeddings: ``[B, L + 1, d]`` embeddings of the batch's item slots.
        item_ids: ``[B, L + 1]`` their ids (0 = padding).
        input_mask: ``[B, L]`` True where position ``j`` has a target (slot ``j + 1``).
        log_pop: ``[N + 1]`` log popularity.
        workers: under torchrun, this rank holds its slice of the global batch: the
            candidates are every rank's slots, and the value returned is this rank's share
            of the global mean, scaled so that averaging gradients over ranks (as
            DistributedDataParallel does) gives the gradient of the global mean.
    """
    batch, slots, dim = item_embeddings.shape
    length = slots - 1
    candidates, first_slot = workers.gather(item_embeddings.reshape(-1, dim))  # [C, d]
    candidate_ids, _ = workers.gather(item_ids.reshape(-1))  # [C]
    logits = user_states.reshape(batch * length, dim) @ candidates.T
    logits = (logits - log_pop[candidate_ids]).view(batch, length, -1)  # [B, L, C]

    arange = functools.partial(torch.arange, device=item_ids.device)
    labels = first_slot + arange(batch)[:, None] * slots + arange(1, slots)
    in_own_sequence = (item_ids[:, :, None] == candidate_ids[None, None, :]).any(dim=1)  # [B, C]
    masked = (in_own_sequence | (candidate_ids == 0)[None, :])[:, None, :].expand(batch, length, -1).clone()
    masked.scatter_(2, labels[:, :, None], False)  # the positive itself stays
    logits = logits.masked_fill(masked, MASKED)
    total = F.cross_entropy(logits[input_mask], labels[input_mask], reduction="sum")
    positions = workers.sum(int(input_mask.sum()))
    return total * (workers.world_size / positions)


def candidate_softmax_loss(
    user_states: torch.Tensor,
    candidates: torch.Tensor,
    candidate_ids: torch.Tensor,
    labels: torch.Tensor,
    input_mask: torch.Tensor,
    log_q: torch.Tensor | None = None,
    own_items: torch.Tensor | None = None,
    workers: Workers = LOCAL,
) -> torch.Tensor:
    """Mean cross-entropy of each position's next item over a set of distinct candidates.

    With every item of the catalogue as candidates this is RecBole's full cross-entropy;
    with the batch's items plus sampled negatives, a sampled softmax.

    Args:
        user_states: ``[B, L, d]`` user-encoder outputs.
        candidates: ``[C, d]`` embeddings of the distinct candidate items ``candidate_ids [C]``
            (id 0, padding, may be among them: it is never a candidate).
        labels: ``[B, L]`` the row of ``candidates`` holding each position's positive.
        input_mask: ``[B, L]`` True where a position has a target.
        log_q: ``[C]`` log sampling probability of each candidate, subtracted from its logit
            (``None`` for the full catalogue, which samples nothing).
        own_items: ``[B, L + 1]`` each user's item ids: candidates among them, other than the
            positive, are masked, as in :func:`in_batch_softmax_loss` (``None``: no masking).
        workers: as in :func:`in_batch_softmax_loss`; every rank holds all candidates.
    """
    states = user_states[input_mask]  # [P, d]
    targets = labels[input_mask]  # [P]
    logits = states @ candidates.T  # [P, C]
    if log_q is not None:
        logits = logits - log_q
    if own_items is None:
        logits[:, candidate_ids == 0] = MASKED
    else:
        in_own = (own_items[:, :, None] == candidate_ids[None, None, :]).any(dim=1)  # [B, C]
        rows = torch.arange(len(user_states), device=states.device)[:, None].expand_as(input_mask)[input_mask]
        masked = in_own[rows] | (candidate_ids == 0)[None, :]  # [P, C]
        masked.scatter_(1, targets[:, None], False)  # the positive itself stays
        logits = logits.masked_fill(masked, MASKED)
    total = F.cross_entropy(logits, targets, reduction="sum")
    positions = workers.sum(int(input_mask.sum()))
    return total * (workers.world_size / positions)


def sampling_probabilities(counts: np.ndarray) -> np.ndarray:
    """Add-one smoothed popularity over items ``1..N`` (padding 0 is never drawn): ``[N + 1]``,
    the distribution ``log_popularity`` corrects for."""
    probabilities = counts.astype(np.float64) + 1.0
    probabilities[0] = 0.0
    return probabilities / probabilities.sum()
