"""Full-ranking metrics: every item is a candidate, never a sample of negatives.

Ties count against the model: the target's rank is the number of items scoring strictly
higher plus the number of *other* items scoring exactly the same. A target that cannot be
ranked (excluded from ranking, -inf, or without a score, NaN) gets the rank :data:`MISS`,
a miss at every K, however small the catalogue.
"""

from __future__ import annotations

import torch

# The rank of a target that was excluded or has no score: beyond any K and any catalogue, so
# never a hit (ranking it after the N items would make it a hit at K > N).
MISS = torch.iinfo(torch.int64).max
# What every choice made on validation maximises: the best epoch, the blend's weights, the
# served first stage's width.
SELECT_K = 10
SELECT_METRIC = f"ndcg@{SELECT_K}"


def pessimistic_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based ranks of ``targets [U]`` in ``scores [U, N + 1]`` with ties broken against
    them; :data:`MISS` for a target scored -inf (excluded: history, padding) or NaN."""
    target_scores = scores.gather(1, targets[:, None])
    # Items scoring >= the target: the higher ones, the tied ones, and the target itself.
    ranks = (scores >= target_scores).sum(dim=1) - 1
    # NaN compares false with everything (rank -1, a perfect hit); -inf ties with every other
    # excluded item (rank <= N, a hit once K > N). Neither is a ranking: both are misses.
    unranked = torch.isnan(target_scores[:, 0]) | (target_scores[:, 0] == -torch.inf)
    return torch.where(unranked, MISS, ranks)


def metric_label(name: str) -> str:
    """How tables print a metric key: ``ndcg@10`` -> ``NDCG@10``, ``mrr`` -> ``MRR``."""
    return name.replace("ndcg", "NDCG").replace("hr", "HR").replace("mrr", "MRR")


def metrics_from_ranks(ranks: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    """HR@K, NDCG@K and MRR@K for each K (RecBole's names and definitions: MRR@K counts
    ``1 / rank`` within the top K, 0 below), and MRR over the whole ranking, averaged over users."""
    ranked = ranks != MISS
    ranks = ranks.double()
    out: dict[str, float] = {}
    for k in ks:
        hit = ranked & (ranks < k)
        out[f"hr@{k}"] = hit.double().mean().item()
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), 0.0).mean().item()
        out[f"mrr@{k}"] = torch.where(hit, 1.0 / (ranks + 1.0), 0.0).mean().item()
    out["mrr"] = torch.where(ranked, 1.0 / (ranks + 1.0), 0.0).mean().item()
    return out

