"""How small can a blended run's served item vectors be? A probe over one trained run.

The default run serves one inner product over ``[e_i (d), c_i (floor content), p_i (priors)]``.
This script keeps the trained part and the priors exact and replaces the floor block by a
rank-``r`` map, then ranks valid and test users (history excluded) three ways:

- ``exact``: the run as it serves today;
- ``single``: the compact vectors alone (what an index of ``d + r + priors`` floats gives);
- ``two-stage``: the compact vectors' top ``M``, scored again exactly (what an index of
  compact vectors plus exact rescoring of a short list gives).

Two rank-``r`` maps: ``pca`` (the floor block's top principal directions over the catalogue,
one map for items and queries), ``bilinear`` (the best rank-``r`` approximation of the floor
score ``q . x`` in mean square over the validation queries and the catalogue: the SVD of
``Sq^1/2 Sx^1/2``, a map for each side).

    python bench/compact_vectors.py RUN [--ranks 29,61] [--candidates 100,200,500] [--json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

EPS = 1e-6


def user_queries(model, items: torch.Tensor, inputs: np.ndarray, chunk: int = 1024) -> torch.Tensor:
    return torch.cat([model.user_vectors(items, inputs[s : s + chunk]) for s in range(0, len(inputs), chunk)])


def masked(scores: torch.Tensor, split, users: np.ndarray) -> torch.Tensor:
    scores[:, 0] = -torch.inf
    rows, cols = split.history_pairs(users)
    scores[torch.from_numpy(rows), torch.from_numpy(cols)] = -torch.inf
    return scores


def ranks_exact(queries, items, split, chunk=512) -> torch.Tensor:
    from iisan.evaluation.metrics import pessimistic_ranks

    out = []
    for s in range(0, len(queries), chunk):
        users = np.arange(s, min(s + chunk, len(queries)))
        scores = masked(queries[users] @ items.T, split, users)
        out.append(pessimistic_ranks(scores, torch.from_numpy(split.targets[users])))
    return torch.cat(out)


def ranks_two_stage(queries, items, compact_q, compact_x, split, candidates: int | None, chunk=512) -> torch.Tensor:
    """Ranks by the compact scores' top ``candidates`` scored exactly (None: compact scores alone);
    a target outside the list ranks at ``candidates`` (a miss for any k up to it)."""
    from iisan.evaluation.metrics import pessimistic_ranks

    out = []
    for s in range(0, len(queries), chunk):
        users = np.arange(s, min(s + chunk, len(queries)))
        approx = masked(compact_q[users] @ compact_x.T, split, users)
        targets = torch.from_numpy(split.targets[users])
        if candidates is None:
            out.append(pessimistic_ranks(approx, targets))
            continue
        top = approx.topk(candidates, dim=1).indices  # [u, M]
        exact = torch.einsum("ud,umd->um", queries[users], items[top])
        exact = torch.where(torch.isfinite(approx.gather(1, top)), exact, torch.full_like(exact, -torch.inf))
        hit = top == targets[:, None]
        target_score = torch.where(hit, exact, torch.full_like(exact, -torch.inf)).amax(1)
        rank = (exact >= target_score[:, None]).sum(1) - 1
        out.append(torch.where(hit.any(1) & torch.isfinite(target_score), rank, torch.full_like(rank, candidates)))
    return torch.cat(out)


def sqrt_and_inverse(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, vectors = np.linalg.eigh(matrix)
    values = np.clip(values, 0, None)
    floor = EPS * values.max()
    root = (vectors * np.sqrt(values)) @ vectors.T
    inverse = (vectors * np.where(values > floor, 1 / np.sqrt(np.maximum(values, floor)), 0.0)) @ vectors.T
    return root, inverse


def maps(kind: str, floor_x: np.ndarray, floor_q: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``(query map, item map)``, each ``[D, r]``."""
    second_x = floor_x.T @ floor_x / len(floor_x)
    if kind == "pca":
        values, vectors = np.linalg.eigh(second_x)
        top = vectors[:, np.argsort(values)[::-1][:rank]]
        return top, top
    second_q = floor_q.T @ floor_q / len(floor_q)
    root_q, inv_q = sqrt_and_inverse(second_q)
    root_x, inv_x = sqrt_and_inverse(second_x)
    u, s, vt = np.linalg.svd(root_q @ root_x)
    scale = np.sqrt(s[:rank])
    return inv_q @ u[:, :rank] * scale, inv_x @ vt[:rank].T * scale


def summary(ranks: torch.Tensor, split) -> dict:
    from iisan.evaluation.metrics import metrics_from_ranks
    from iisan.evaluation.slices import metrics_by_slice

    row = {"ndcg@10": round(metrics_from_ranks(ranks, (10,))["ndcg@10"], 5)}
    for name, values in metrics_by_slice(ranks, split.target_counts, (10,)).items():
        row[name] = round(values.get("ndcg@10", 0.0), 5)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--ranks", default="13,29,61")
    parser.add_argument("--candidates", default="50,100,200,500")
    parser.add_argument("--kinds", default="pca,bilinear,joint")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from iisan.assemble import assemble_run
    from iisan.evaluation.ranking import item_embeddings

    parts = assemble_run(args.run)
    model = parts.scorer
    if model is parts.model:
        raise SystemExit(f"{args.run}: no scorer (trained with --no-blend, or a method without one)")
    blend = model.blend
    items = item_embeddings(model, parts.source, parts.dataset.num_items)
    d, c = model.dim, blend.content.dim
    floor_x = items[1:, d : d + c].double().numpy()
    queries = {name: user_queries(model, items, getattr(parts.splits, name).inputs) for name in ("valid", "test")}
    floor_q = queries["valid"][:, d : d + c].double().numpy()
    nonzero_words = None
    if blend.terms is not None:
        words = items[1:, d + c - blend.terms.dims : d + c]
        nonzero_words = round(float((words != 0).sum(1).float().mean()), 1)
    rows = []
    for name in ("valid", "test"):
        split = getattr(parts.splits, name)
        rows.append({"split": name, "method": "exact", "floats": items.shape[1], **summary(
            ranks_exact(queries[name], items, split), split)})
    # "joint": the trained part and the floor mapped together to ``rank`` columns (priors exact)
    joint_x, joint_q = items[1:, : d + c].double().numpy(), queries["valid"][:, : d + c].double().numpy()
    for kind in args.kinds.split(","):
        for rank in (int(r) for r in args.ranks.split(",")):
            if kind == "joint":
                q_map, x_map = maps("bilinear", joint_x, joint_q, rank)
            else:
                q_map, x_map = maps(kind, floor_x, floor_q, rank)
            q_map, x_map = torch.from_numpy(q_map).float(), torch.from_numpy(x_map).float()

            def compact(rows: torch.Tensor, side_map: torch.Tensor) -> torch.Tensor:
                if kind == "joint":
                    return torch.cat([rows[:, : d + c] @ side_map, rows[:, d + c :]], dim=1)
                return torch.cat([rows[:, :d], rows[:, d : d + c] @ side_map, rows[:, d + c :]], dim=1)

            compact_x = compact(items, x_map)
            for name in ("valid", "test"):
                split, q = getattr(parts.splits, name), queries[name]
                compact_q = compact(q, q_map)
                for m in [None, *(int(x) for x in args.candidates.split(","))]:
                    ranks = ranks_two_stage(q, items, compact_q, compact_x, split, m)
                    rows.append({"split": name, "method": f"{kind}-r{rank}" + (f"-M{m}" if m else ""),
                                 "floats": compact_x.shape[1], **summary(ranks, split)})
                    if not args.json:
                        print(json.dumps(rows[-1]), flush=True)
    report = {"run": args.run, "item_floats": items.shape[1], "word_nonzeros": nonzero_words, "rows": rows}
    print(json.dumps(report, indent=2) if args.json else json.dumps(rows[:2]))


if __name__ == "__main__":
    main()
