"""How far re-weighting a blended run's two scores can take its rare targets.

The blend (:mod:`iisan.scoring.blend`) ranks by z(trained) + alpha z(floor) + priors. The
priors and the groups of users decide how far cold and tail items move up as a whole; what
orders the items of one slice among themselves is the mix of the two scores. This script
measures that mix with an oracle: for each user whose next item is cold (never in the
training part) or tail (1-4 times there) it ranks only the items of that slice, as if a
prior had known exactly which slice each user's next item is in and lifted that slice above
every other item. Per target slice, NDCG@10 with history excluded, for the floor's weight
alpha on a grid (``floor`` alone as the last row), next to the floor ranking every item
(the yardstick of issue 27's targets); then the best of alpha and the blend's popularity
prior together (gamma log(1 + count), the one prior that reorders items within a slice),
picked on the split itself, so an upper bound. Groups of users could pick another weight
per group; the grid shows how much that could matter.

It holds the two score rows of every cold- and tail-target user (8 bytes a user and item):
about 1 GB for Scientific's 5,700 such users and 20,000 items.

    python bench/rare_ceiling.py RUN_DIR [RUN_DIR ...] [--split valid|test] [--json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from iisan.assemble import assemble_run
from iisan.evaluation.slices import SLICES
from iisan.evaluation.metrics import metrics_from_ranks, pessimistic_ranks
from iisan.evaluation.ranking import item_embeddings
from iisan.evaluation.slices import slice_of
from iisan.scoring.calibrate import _score_rows

ALPHAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
# The popularity prior's weights: the blend's grid (iisan.scoring.calibrate) and beyond it,
# so a best weight at the blend's edge (0.4) is not mistaken for the ceiling.
POPULARITY_PRIORS = (-0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0)
RARE_SLICES = ("cold", "tail")


def score_rows(run_dir: str, split_name: str):
    """For the users whose target is cold or tail, per chunk: the standardised trained and
    floor scores over every item (history and padding at minus infinity in both), the
    targets and their slices; then every item's training count. The rows are calibration's
    (:func:`iisan.scoring.calibrate._score_rows`), so the oracle reads what the blend reads."""
    parts = assemble_run(run_dir)
    model = parts.scorer  # the model with its scorer
    if model is parts.model:
        raise SystemExit(f"{run_dir}: no calibrated blend (trained with --no-blend or a method without one)")
    blend = model.blend
    items = item_embeddings(model, parts.source, parts.dataset.num_items)
    blend.alpha.fill_(1.0)  # queries then carry [u / sd_u, h / sd_h, 0...], as calibration reads them
    blend.priors.zero_()
    split = getattr(parts.splits, split_name)
    slices = slice_of(split.target_counts)
    rare_users = np.flatnonzero(np.isin(slices, RARE_SLICES))
    chunks, start = [], 0
    for trained, floor, targets in zip(*_score_rows(model, items, split, rare_users, include_history=False)):
        # calibration masks history and padding in the trained row only (it ranks their sum)
        floor = floor.masked_fill(torch.isneginf(trained), -torch.inf)
        chunks.append((trained, floor, targets, slices[rare_users[start : start + len(targets)]]))
        start += len(targets)
    return chunks, blend.counts.cpu()


def ndcg(ranks: list[torch.Tensor]) -> float | None:
    """NDCG@10 of the users whose ranks are given; ``None`` when there are none."""
    return round(metrics_from_ranks(torch.cat(ranks), (10,))["ndcg@10"], 4) if ranks else None


def cell(value: float | None, yardstick: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value / yardstick:.2f}x" if yardstick is not None else f"{value:.4f}"


def ceiling(run_dir: str, split_name: str) -> dict:
    chunks, counts = score_rows(run_dir, split_name)
    outside = {name: ~((counts >= low) & (counts <= high)) | (torch.arange(len(counts)) == 0)
               for name, low, high in SLICES if name in RARE_SLICES}
    popularity = torch.log1p(counts.float())
    settings = [(alpha, gamma) for alpha in (*ALPHAS, None) for gamma in POPULARITY_PRIORS]
    ranks = {(setting, name): [] for setting in settings for name in RARE_SLICES}
    floor_all = {name: [] for name in RARE_SLICES}
    for trained, floor, targets, slices in chunks:
        for name in RARE_SLICES:
            mine = torch.from_numpy(slices == name)
            if not mine.any():
                continue
            floor_all[name].append(pessimistic_ranks(floor[mine], targets[mine]))
            for alpha, gamma in settings:
                scores = floor[mine] if alpha is None else trained[mine] + alpha * floor[mine]
                scores = (scores + gamma * popularity).masked_fill(outside[name], -torch.inf)
                ranks[(alpha, gamma), name].append(pessimistic_ranks(scores, targets[mine]))
    label = {alpha: "floor" if alpha is None else f"alpha {alpha:g}" for alpha in (*ALPHAS, None)}
    # Ties keep no popularity prior (it cannot reorder cold items, which all count 0).
    best = {name: max(settings, key=lambda setting: (ndcg(ranks[setting, name]), setting[1] == 0.0))
            for name in RARE_SLICES}
    return {
        "split": split_name,
        "share_of_catalogue": {name: round(float((~m)[1:].float().mean()), 4) for name, m in outside.items()},
        "users": {name: sum(int((c[3] == name).sum()) for c in chunks) for name in RARE_SLICES},
        "floor_every_item": {name: ndcg(floor_all[name]) for name in RARE_SLICES},
        "own_slice_only": {label[alpha]: {name: ndcg(ranks[(alpha, 0.0), name]) for name in RARE_SLICES}
                           for alpha in (*ALPHAS, None)},
        "best_with_popularity_prior": {name: {"alpha": label[best[name][0]], "gamma": best[name][1],
                                              "ndcg@10": ndcg(ranks[best[name], name])} for name in RARE_SLICES},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="blended run folders written by `iisan train`")
    parser.add_argument("--split", choices=("valid", "test"), default="valid")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {run: ceiling(run, args.split) for run in args.runs}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for run, result in results.items():
        floor = result["floor_every_item"]
        share, users = result["share_of_catalogue"], result["users"]
        print(f"{run} ({result['split']}; items: {share['cold']:.0%} cold, {share['tail']:.0%} tail; "
              f"users: {users['cold']} cold, {users['tail']} tail)")
        print(f"  {'ranking':<40} {'cold':>7} {'tail':>7}")
        print(f"  {'floor, every item':<40} {cell(floor['cold']):>7} {cell(floor['tail']):>7}")
        rows = {f"own slice only, {'' if label == 'floor' else 'trained + '}{label}": values
                for label, values in result["own_slice_only"].items()}
        best = result["best_with_popularity_prior"]
        rows["own slice only, best alpha + popularity"] = {name: best[name]["ndcg@10"] for name in RARE_SLICES}
        for label, values in rows.items():
            ratio = "  ".join(cell(values[s], floor[s]) if floor[s] else "-" for s in RARE_SLICES)
            print(f"  {label:<40} {cell(values['cold']):>7} {cell(values['tail']):>7}   ({ratio} the floor)")
        print("  best: " + "; ".join(f"{name} {best[name]['alpha']}, gamma {best[name]['gamma']:g}" for name in RARE_SLICES))


if __name__ == "__main__":
    main()
