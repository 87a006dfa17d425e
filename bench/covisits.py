"""Could what users did together lift rare targets? Co-visits per popularity slice.

A content model is asked to reach rare items; an id model, or a transition score
("items that followed this one in other users' sequences"), reaches an item through its
few training occurrences instead. This script measures how much such a signal could hold
for each slice of the target (cold, tail, head: :mod:`iisan.evaluation.slices`): the
share of users whose target followed one of their last ``--last`` items within
``--window`` positions somewhere in the training part (every position of ``seq[:-2]``),
and NDCG@10 of ranking every item by that co-visit count alone (decayed by distance,
history excluded, ties counted against the target, as ``iisan evaluate`` does).

    python bench/covisits.py DATASET_DIR [--split valid|test] [--last 3] [--window 3] [--json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import polars as pl

from iisan.evaluation.slices import SLICE_NAMES, slice_of


def transitions(sequences: list[list[int]], window: int) -> dict[int, Counter]:
    """``follows[a][b]``: how often ``b`` came within ``window`` positions after ``a``,
    each occurrence weighted 1 / distance."""
    follows: dict[int, Counter] = defaultdict(Counter)
    for items in sequences:
        for position, item in enumerate(items):
            for distance, later in enumerate(items[position + 1 : position + 1 + window], start=1):
                follows[item][later] += 1.0 / distance
    return follows


def covisits(dataset: Path, split: str, last: int, window: int) -> dict:
    sequences = pl.read_parquet(dataset / "sequences.parquet")["items"].to_list()
    training = [items[:-2] for items in sequences]
    follows = transitions(training, window)
    counts = Counter(item for items in training for item in items)
    offset = 2 if split == "valid" else 1
    covered = defaultdict(list)
    gains = defaultdict(list)
    for items in sequences:
        history, target = items[: len(items) - offset], items[len(items) - offset]
        name = slice_of(np.array([counts[target]]))[0]
        scores: Counter = Counter()
        for distance, item in enumerate(reversed(history[-last:]), start=1):
            for later, weight in follows.get(item, {}).items():
                scores[later] += weight / distance
        for item in history:
            scores.pop(item, None)  # history excluded
        mine = scores.get(target, 0.0)
        covered[name].append(mine > 0)
        # pessimistic rank: every item scoring at least the target's, the zero-score items included
        rank = sum(1 for s in scores.values() if s >= mine) - 1 if mine > 0 else None
        gains[name].append(1.0 / np.log2(rank + 2) if rank is not None and rank < 10 else 0.0)
    return {"dataset": str(dataset), "split": split, "last": last, "window": window,
            "slices": {name: {"users": len(covered[name]), "covisited": round(float(np.mean(covered[name])), 4),
                              "ndcg@10": round(float(np.mean(gains[name])), 4)}
                       for name in SLICE_NAMES if covered[name]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="a prepared dataset folder")
    parser.add_argument("--split", choices=("valid", "test"), default="valid")
    parser.add_argument("--last", type=int, default=3, help="the history's most recent items that vote")
    parser.add_argument("--window", type=int, default=3, help="positions after an item that count as following it")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = covisits(args.dataset, args.split, args.last, args.window)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['dataset']} ({args.split}; last {args.last} items, window {args.window})")
    print(f"  {'slice':<6} {'users':>7} {'co-visited':>11} {'NDCG@10':>8}")
    for name, row in result["slices"].items():
        print(f"  {name:<6} {row['users']:>7,} {row['covisited']:>11.1%} {row['ndcg@10']:>8.4f}")


if __name__ == "__main__":
    main()
