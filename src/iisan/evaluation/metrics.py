"""Full-ranking metrics: every item is a candidate, never a sample of negatives.

Ties count against the model: the target's rank is the number of items scoring strictly
higher plus the number of *other* items scoring exactly the same.
"""

from __future__ import annotations

import torch


def pessimistic_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based ranks of ``targets [U]`` in ``scores [U, N + 1]`` with ties broken against them."""
    target_scores = scores.gather(1, targets[:, None])
    # Items scoring >= the target: the higher ones, the tied ones, and the target itself.
    ranks = (scores >= target_scores).sum(dim=1) - 1
    # NaN compares false with everything: the rank would be -1, a perfect hit. A target
    # without a real score ranks last instead (callers refuse NaN before; this is the floor).
    return torch.where(torch.isnan(target_scores[:, 0]), scores.shape[1] - 1, ranks)


def metric_label(name: str) -> str:
    """How tables print a metric key: ``ndcg@10`` -> ``NDCG@10``, ``mrr`` -> ``MRR``."""
    return name.replace("ndcg", "NDCG").replace("hr", "HR").replace("mrr", "MRR")


def metrics_from_ranks(ranks: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    """HR@K, NDCG@K and MRR@K for each K (RecBole's names and definitions: MRR@K counts
    ``1 / rank`` within the top K, 0 below), and MRR over the whole ranking, averaged over users."""
    ranks = ranks.double()
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = hit.double().mean().item()
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), 0.0).mean().item()
        out[f"mrr@{k}"] = torch.where(hit, 1.0 / (ranks + 1.0), 0.0).mean().item()
    out["mrr"] = (1.0 / (ranks + 1.0)).mean().item()
    return out

