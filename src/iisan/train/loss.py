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

import torch
from torch.nn import functional as F

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
) -> torch.Tensor:
    """Mean cross-entropy over real positions.

    Args:
        user_states: ``[B, L, d]`` user-encoder outputs at input positions.
        item_embeddings: ``[B, L + 1, d]`` embeddings of the batch's item slots.
        item_ids: ``[B, L + 1]`` their ids (0 = padding).
        input_mask: ``[B, L]`` True where position ``j`` has a target (slot ``j + 1``).
        log_pop: ``[N + 1]`` log popularity.
    """
    batch, slots, dim = item_embeddings.shape
    length = slots - 1
    candidate_ids = item_ids.reshape(-1)  # [C], C = B * (L + 1)
    logits = user_states.reshape(batch * length, dim) @ item_embeddings.reshape(-1, dim).T
    logits = (logits - log_pop[candidate_ids]).view(batch, length, -1)  # [B, L, C]

    labels = torch.arange(batch, device=item_ids.device)[:, None] * slots + torch.arange(1, slots, device=item_ids.device)
    in_own_sequence = (item_ids[:, :, None] == candidate_ids[None, None, :]).any(dim=1)  # [B, C]
    masked = (in_own_sequence | (candidate_ids == 0)[None, :])[:, None, :].expand(batch, length, -1).clone()
    masked.scatter_(2, labels[:, :, None], False)  # the positive itself stays
    logits = logits.masked_fill(masked, MASKED)
    return F.cross_entropy(logits[input_mask], labels[input_mask])
