"""One optimisation step: the next-item objective of a batch, the step that applies it, and
the optimizer over the model's parameter groups. :mod:`iisan.training.loop` runs them epoch
by epoch; the benchmarks time them alone."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from iisan.assemble import Assembled
from iisan.distributed import LOCAL, Workers
from iisan.errors import NonFiniteError
from iisan.models.inputs import ItemFeatures
from iisan.models.sequential import SequentialRecommender
from iisan.training.loss import candidate_softmax_loss, in_batch_softmax_loss


class NextItemObjective(torch.nn.Module):
    """The training loss of one batch as a module, so that DistributedDataParallel can wrap it
    (it synchronises gradients of what runs inside ``forward``)."""

    def __init__(self, model: SequentialRecommender, log_pop: torch.Tensor, workers: Workers = LOCAL,
                 loss: str = "in_batch", last_only: bool = False) -> None:
        super().__init__()
        self.model = model
        self.log_pop = log_pop  # a plain attribute, not a buffer: DDP must not broadcast it
        self.workers = workers
        self.loss = loss
        self.last_only = last_only  # prefix samples: only the last position's target counts

    @classmethod
    def for_run(cls, parts: Assembled, log_pop: torch.Tensor, workers: Workers = LOCAL) -> NextItemObjective:
        config = parts.config
        return cls(parts.model, log_pop, workers, config.loss, last_only=config.samples == "prefixes")

    def forward(self, features: ItemFeatures, inverse: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``features`` of the distinct items the step needs (the batch's, plus every
        candidate of the ``full`` and ``sampled`` losses); ``inverse [B, L + 1]`` maps each
        slot to its row there; ``ids [B, L + 1]`` the slots' item ids."""
        table = self.model.embed_items(features)
        embeddings = table[inverse]
        input_mask = ids[:, :-1] != 0
        user_states = self.model.user(embeddings[:, :-1], input_mask)  # [B, L, d]
        if self.last_only:  # the earlier positions' targets are other samples' (shorter prefixes)
            input_mask = input_mask.clone()
            input_mask[:, :-1] = False
        if self.loss == "in_batch":
            return in_batch_softmax_loss(user_states, embeddings, ids, input_mask, self.log_pop, self.workers)
        sampled = self.loss == "sampled"
        return candidate_softmax_loss(user_states, table, features.ids, inverse[:, 1:], input_mask,
                                      log_q=self.log_pop[features.ids] if sampled else None,
                                      own_items=ids if sampled else None, workers=self.workers)


def step_objective(parts: Assembled, log_pop: torch.Tensor, workers: Workers = LOCAL) -> torch.nn.Module:
    """The module a training step calls: the objective, wrapped in DDP when there are several ranks."""
    objective = NextItemObjective.for_run(parts, log_pop, workers)
    if not workers.distributed:
        return objective
    device_ids = [workers.device] if workers.device.type == "cuda" else None
    return DistributedDataParallel(objective, device_ids=device_ids, broadcast_buffers=False)


def training_step(parts: Assembled, optimizer: torch.optim.Optimizer, batch_ids: np.ndarray,
                  log_pop: torch.Tensor | None = None, objective: torch.nn.Module | None = None,
                  workers: Workers = LOCAL, negatives: np.ndarray | None = None) -> float:
    """One optimisation step on ``batch_ids [B, L + 1]``; returns the loss.

    The item tower embeds each distinct item the loss needs once: the batch's items, with
    ``loss="full"`` the whole catalogue, with ``loss="sampled"`` also ``negatives`` (item ids).

    Give ``log_pop`` (the objective is then built for this step) or ``objective`` (from
    :func:`step_objective`, which holds it). Under torchrun ``batch_ids`` is this rank's
    share of the global batch, ``objective`` the DDP-wrapped :class:`NextItemObjective`,
    and the value returned this rank's share of the global loss (their mean over ranks is
    the global loss).
    """
    if objective is None:
        if log_pop is None:
            raise ValueError("training_step needs log_pop or an objective")
        objective = NextItemObjective.for_run(parts, log_pop, workers)
    device = workers.device
    if parts.config.loss == "full":
        unique, inverse = np.arange(parts.dataset.num_items + 1), batch_ids
    else:
        # Each distinct item goes through the item tower once, however often it occurs.
        extra = negatives if parts.config.loss == "sampled" and negatives is not None else np.zeros(0, np.int64)
        unique, inverse = np.unique(np.concatenate([batch_ids.ravel(), extra]), return_inverse=True)
        inverse = inverse[: batch_ids.size]
    features = parts.source.features(unique).to(device)
    loss = objective(features, torch.from_numpy(inverse.reshape(batch_ids.shape)).to(device),
                     torch.from_numpy(batch_ids).to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # The norm is of the gradients after DDP averaged them, so every rank sees the same value
    # and stops together; a NaN loss on any rank makes it NaN.
    norm = torch.nn.utils.clip_grad_norm_(parts.model.parameters(), parts.config.grad_clip)
    value = float(loss.detach())
    if not (math.isfinite(value) and math.isfinite(float(norm))):
        optimizer.zero_grad(set_to_none=True)
        what = f"the loss is {value}" if not math.isfinite(value) else f"the gradient norm is {float(norm)}"
        raise NonFiniteError(what)
    optimizer.step()
    return value


def build_optimizer(parts: Assembled) -> torch.optim.AdamW:
    """AdamW over the model's parameter groups (:meth:`SequentialRecommender.parameter_groups`),
    each at the recipe's rate for it, kept as the group's ``base_lr``, which the schedule
    scales step by step."""
    config = parts.config
    rates = {"rest": config.lr, "side": config.side_lr, "id_offsets": config.content.id_offset_lr}
    groups = [{"params": params, "lr": rates[part], "base_lr": rates[part]}
              for part, params in parts.model.parameter_groups().items() if params or part == "rest"]
    # Fused: one kernel per tensor instead of a dozen (bench/train_step.py times the step both
    # ways). A resumed run keeps the form its saved optimizer.json names, so runs saved before
    # continue unfused.
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay, fused=True)
