"""Scoring every user against every item, in bounded-memory chunks."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from iisan.config import EVAL_KS
from iisan.data.split import EvalSplit
from iisan.distributed import LOCAL, Workers
from iisan.errors import NonFiniteError
from iisan.evaluation.exposure import EXPOSURE_K, exposure
from iisan.evaluation.metrics import metrics_from_ranks, pessimistic_ranks
from iisan.evaluation.slices import metrics_by_slice
from iisan.features import FeatureSource
from iisan.models.sequential import SequentialRecommender

ITEM_CHUNK = 4096
SCORE_BUDGET = 1 << 26  # scores held at once (256 MB of float32), whatever the catalogue size
DEFAULT_KS = EVAL_KS


def model_device(model: torch.nn.Module) -> torch.device:
    return model.device


@torch.no_grad()
def item_embeddings(model: SequentialRecommender, source: FeatureSource, num_items: int,
                    workers: Workers = LOCAL) -> torch.Tensor:
    """The ranking vector of every item ``[N + 1, width]`` (row 0, padding, is zero), computed
    once: the model's trained embeddings, or its scorer's item vectors (``model`` is either: see
    :class:`~iisan.scoring.scorer.BlendScorer`).

    Under torchrun each rank embeds its share of the catalogue and every rank gets all rows.
    """
    model.eval()
    device = model_device(model)
    share = workers.share(num_items + 1)
    chunks = [model.catalogue_vectors(source.features(np.arange(s, min(s + ITEM_CHUNK, share.stop))).to(device))
              for s in range(share.start, share.stop, ITEM_CHUNK)]
    local = torch.cat(chunks) if chunks else torch.zeros(0, model.catalogue_width, device=device)
    items = workers.gather(local)[0]
    require_finite_rows(items, "item", "items")
    return items


def require_finite_rows(rows: torch.Tensor, one: str, many: str) -> None:
    """Raise :class:`NonFiniteError` naming how many rows hold NaN or infinity: such an
    embedding would rank as a hit or vanish from every ranking, never be a real score."""
    bad = int((~torch.isfinite(rows).all(dim=-1)).sum())
    if bad:
        raise NonFiniteError(
            f"{bad} {one if bad == 1 else many} of {len(rows)} got non-finite embeddings (NaN or infinity): "
            "the run's weights or the cache are damaged; retrain the run or rebuild the cache"
        )


@torch.no_grad()
def evaluate_split(
    model: SequentialRecommender,
    items: torch.Tensor,
    split: EvalSplit,
    ks: tuple[int, ...] = DEFAULT_KS,
    batch_size: int = 1024,
    include_history: bool = False,
    workers: Workers = LOCAL,
    item_counts: np.ndarray | None = None,
) -> dict[str, Any]:
    """Full-ranking HR@K, NDCG@K and MRR over all users of ``split``, and the same per
    popularity slice under ``"slices"`` when the split knows its targets' training counts
    (see :mod:`iisan.evaluation.slices`). Given every item's training count
    (``item_counts [N + 1]``), also what the users' top-10 lists reach, under
    ``"exposure@10"`` (:mod:`iisan.evaluation.exposure`).

    Users are scored in chunks of at most ``batch_size``, fewer when the catalogue is so
    large that ``batch_size x N`` scores would exceed :data:`SCORE_BUDGET`, so memory
    stays bounded whatever the catalogue size. Unless ``include_history``, each user's
    history is excluded from ranking, as in the reference; a target that repeats a
    history item is excluded too and counts as a miss. Under torchrun each rank ranks its
    share of the users and the metrics cover all of them.
    """
    top_k = EXPOSURE_K if item_counts is not None else 0
    ranks, top = rank_split(model, items, split, batch_size, include_history, workers, top_k)
    metrics: dict[str, Any] = metrics_from_ranks(ranks, ks)
    if split.target_counts is not None:
        metrics["slices"] = metrics_by_slice(ranks, split.target_counts, ks)
    if top is not None:
        metrics[f"exposure@{top_k}"] = exposure(top, item_counts)
    return metrics


class Ranking(NamedTuple):
    ranks: torch.Tensor  # [U] the 0-based rank of each user's target
    top: torch.Tensor | None  # [U, k] each user's k best items, best first (0: no item left to rank)


@torch.no_grad()
def rank_split(model: SequentialRecommender, items: torch.Tensor, split: EvalSplit, batch_size: int = 1024,
               include_history: bool = False, workers: Workers = LOCAL, top_k: int = 0) -> Ranking:
    """Every user's target rank, and with ``top_k`` their ``top_k`` best items (on the CPU);
    see :func:`evaluate_split` for the chunking, the history and torchrun."""
    device = items.device
    chunk_size = max(1, min(batch_size, SCORE_BUDGET // items.shape[0]))
    share = workers.share(len(split.targets))
    ranks = [torch.zeros(0, dtype=torch.long, device=device)]
    tops = [torch.zeros(0, min(top_k, items.shape[0]), dtype=torch.long, device=device)]
    broken = 0  # users whose vector is not finite: counted on every rank, then refused together
    for start in range(share.start, share.stop, chunk_size):
        chunk = np.arange(start, min(start + chunk_size, share.stop))
        users = model.user_vectors(items, split.inputs[chunk])
        broken += int((~torch.isfinite(users).all(dim=-1)).sum())
        scores = users @ items.T  # [chunk, N + 1]
        scores[:, 0] = -torch.inf  # padding is never recommended
        if not include_history:
            rows, cols = split.history_pairs(chunk)
            scores[torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)] = -torch.inf
        scores = model.served(users, items, scores)  # what a served query ranks (a first stage's candidates)
        ranks.append(pessimistic_ranks(scores, torch.from_numpy(split.targets[chunk]).to(device)))
        if top_k:
            best = scores.topk(min(top_k, scores.shape[1]), dim=1)
            tops.append(torch.where(torch.isfinite(best.values), best.indices, 0))
    broken = int(workers.sum(broken))
    if broken:
        raise NonFiniteError(f"{broken} of {len(split.targets)} users got non-finite user vectors (NaN or "
                             "infinity): the run's weights are damaged; retrain the run")
    top = workers.gather(torch.cat(tops))[0].cpu() if top_k else None
    return Ranking(workers.gather(torch.cat(ranks))[0].cpu(), top)
