"""Where a run's history-ranked test NDCG@10 comes from: repeat targets versus new items.

When history is ranked too (RecBole's protocol for sequential models), a test target that
repeats an item of the user's own history can be a hit, and an ID model places such
repeats at rank 1 far more often than a content model, which also scores the repeat's
near-duplicate neighbours (same product, other size or pack) almost as high. This splits
each run's NDCG@10 and HR@10 into the contribution of repeat targets and of new items
(both over all test users, so the two add up to the run's figure), and shows how often a
repeat target is ranked first.

    python bench/repeat_targets.py RUN_DIR [RUN_DIR ...] [--json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from iisan.evaluation.metrics import pessimistic_ranks
from iisan.evaluation.ranking import item_embeddings
from iisan.assemble import assemble_run

K = 10


def test_ranks(run_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of every test target with history ranked, and whether it repeats history."""
    parts = assemble_run(run_dir)
    items = item_embeddings(parts.scorer, parts.source, parts.dataset.num_items)
    split = parts.splits.test
    users = len(split.targets)
    ranks = []
    for start in range(0, users, 1024):
        chunk = np.arange(start, min(start + 1024, users))
        scores = parts.scorer.user_vectors(items, split.inputs[chunk]) @ items.T
        scores[:, 0] = -torch.inf
        ranks.append(pessimistic_ranks(scores, torch.from_numpy(split.targets[chunk])))
    rows, cols = split.history_pairs(np.arange(users))
    repeats = np.zeros(users, dtype=bool)
    repeats[rows[cols == split.targets[rows]]] = True
    return torch.cat(ranks).numpy(), repeats


def breakdown(ranks: np.ndarray, repeats: np.ndarray) -> dict[str, float]:
    gain = np.where(ranks < K, 1.0 / np.log2(ranks + 2.0), 0.0)
    hit = (ranks < K).astype(float)
    users = len(ranks)
    return {
        "repeat_share": round(float(repeats.mean()), 4),
        f"ndcg@{K}": round(float(gain.sum() / users), 4),
        f"ndcg@{K}_from_repeats": round(float(gain[repeats].sum() / users), 4),
        f"ndcg@{K}_from_new": round(float(gain[~repeats].sum() / users), 4),
        f"hr@{K}_from_repeats": round(float(hit[repeats].sum() / users), 4),
        f"hr@{K}_from_new": round(float(hit[~repeats].sum() / users), 4),
        "repeats_ranked_first": round(float((ranks[repeats] == 0).mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--json", action="store_true", help="one JSON object per run instead of a table")
    args = parser.parse_args()
    results = {run: breakdown(*test_ranks(run)) for run in args.runs}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    columns = list(next(iter(results.values())))
    print("| run | " + " | ".join(columns) + " |")
    print("| --- " * (len(columns) + 1) + "|")
    for run, row in results.items():
        print(f"| {run} | " + " | ".join(f"{row[c]:.4f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
