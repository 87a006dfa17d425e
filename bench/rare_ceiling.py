"""How far re-weighting a blended run's two scores can take its rare targets.

The blend (:mod:`iisan.models.blend`) ranks by z(trained) + alpha z(floor) + priors. The
priors and the groups of users decide how far cold and tail items move up as a whole; what
orders the items of one slice among themselves is the mix of the two scores. This script
measures that mix with an oracle: for each user whose next item is cold (never in the
training part) or tail (1-4 times there) it ranks only the items of that slice, as if a
prior had known exactly which slice each user's next item is in and lifted that slice above
every other item. No prior, group or selection rule fitted on these two scores can do
better on those users. Per target slice, NDCG@10 with history excluded, for the floor's
weight alpha on a grid (``floor`` alone as the last row), next to the floor ranking every
item (the yardstick of issue 27's targets).

    python bench/rare_ceiling.py RUN_DIR [RUN_DIR ...] [--split valid|test] [--user-chunk N] [--json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from iisan.assemble import assemble_run
from iisan.evaluation.metrics import metrics_from_ranks, pessimistic_ranks
from iisan.evaluation.ranking import item_embeddings
from iisan.evaluation.slices import slice_of
from iisan.config import SLICES

ALPHAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
RARE_SLICES = ("cold", "tail")


def score_rows(run_dir: str, split_name: str, user_chunk: int):
    """Per chunk of users: the standardised trained and floor scores over every item (history
    and padding at minus infinity in both), the targets; then the items' training counts and
    the users' target slices."""
    parts = assemble_run(run_dir)
    model, blend = parts.model, parts.model.blend
    if not model.blending:
        raise SystemExit(f"{run_dir}: no calibrated blend (trained with --no-blend or a method without one)")
    items = item_embeddings(model, parts.source, parts.dataset.num_items)
    blend.alpha.fill_(1.0)  # queries then carry [u / sd_u, h / sd_h, 0...], as calibration reads them
    blend.priors.zero_()
    trained_items, content_items = blend.split(items)
    split = getattr(parts.splits, split_name)
    chunks = []
    for start in range(0, len(split.targets), user_chunk):
        users = np.arange(start, min(start + user_chunk, len(split.targets)))
        query = model.user_vectors(items, split.inputs[users])
        trained = query[:, : blend.dim] @ trained_items.T
        floor = query[:, blend.dim : blend.dim + blend.content.dim] @ content_items.T
        rows, cols = (torch.from_numpy(a) for a in split.history_pairs(users))
        for scores in (trained, floor):
            scores[:, 0] = -torch.inf
            scores[rows, cols] = -torch.inf
        chunks.append((trained, floor, torch.from_numpy(split.targets[users])))
    return chunks, blend.counts.cpu(), slice_of(split.target_counts)


def ndcg_by_slice(ranks: torch.Tensor, slices: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    return {name: round(metrics_from_ranks(ranks[torch.from_numpy(slices == name)], (10,))["ndcg@10"], 4)
            for name in names}


def ceiling(run_dir: str, split_name: str, user_chunk: int = 1024) -> dict:
    chunks, counts, slices = score_rows(run_dir, split_name, user_chunk)
    items_in = {name: (counts >= low) & (counts <= high) & (torch.arange(len(counts)) > 0)
                for name, low, high in SLICES if name in RARE_SLICES}
    settings = {**{f"alpha {a:g}": a for a in ALPHAS}, "floor": None}
    own_slice = {(label, name): [] for label in settings for name in RARE_SLICES}
    floor_all = []
    for trained, floor, targets in chunks:
        floor_all.append(pessimistic_ranks(floor, targets))
        for label, alpha in settings.items():
            scores = floor if alpha is None else trained + alpha * floor
            for name, members in items_in.items():
                own_slice[label, name].append(pessimistic_ranks(scores.masked_fill(~members, -torch.inf), targets))
    return {
        "split": split_name,
        "share_of_catalogue": {name: round(float(m[1:].float().mean()), 4) for name, m in items_in.items()},
        "users": {name: int((slices == name).sum()) for name in RARE_SLICES},
        "floor_every_item": ndcg_by_slice(torch.cat(floor_all), slices, RARE_SLICES),
        "own_slice_only": {label: {name: ndcg_by_slice(torch.cat(own_slice[label, name]), slices, (name,))[name]
                                   for name in RARE_SLICES} for label in settings},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="blended run folders written by `iisan train`")
    parser.add_argument("--split", choices=("valid", "test"), default="valid")
    parser.add_argument("--user-chunk", type=int, default=1024, help="users scored at once")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {run: ceiling(run, args.split, args.user_chunk) for run in args.runs}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for run, result in results.items():
        floor = result["floor_every_item"]
        share, users = result["share_of_catalogue"], result["users"]
        print(f"{run} ({result['split']}; items: {share['cold']:.0%} cold, {share['tail']:.0%} tail; "
              f"users: {users['cold']} cold, {users['tail']} tail)")
        print(f"  {'ranking':<38} {'cold':>7} {'tail':>7}")
        print(f"  {'floor, every item':<38} {floor['cold']:>7.4f} {floor['tail']:>7.4f}")
        for label, values in result["own_slice_only"].items():
            ratio = "  ".join(f"{values[s] / floor[s]:.2f}x" if floor[s] else "-" for s in RARE_SLICES)
            print(f"  {'own slice only, ' + (label if label == 'floor' else 'trained + ' + label):<38} "
                  f"{values['cold']:>7.4f} {values['tail']:>7.4f}   ({ratio} the floor)")


if __name__ == "__main__":
    main()
