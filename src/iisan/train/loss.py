"""In-batch softmax with log-popularity correction (the reference's loss, vectorised).

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

import torch
from torch.nn import functional as F

from iisan.train.distributed import LOCAL, Workers

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
