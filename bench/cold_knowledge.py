"""How well would the blend have to know whose next item is cold?

`bench/rare_ceiling.py` shows that a blended run would rank cold targets about twice as
well as the content-only floor if it knew exactly which users' next item is cold. This
script asks how exactly it must know. The blend's groups of users (:mod:`iisan.scoring.blend`)
are replaced by groups drawn from a simulated predictor of that fact with a chosen AUC,
z = 1[target cold] + sigma * noise, where AUC = Phi(1 / (sigma sqrt 2)): three groups, the
top p of z, the next p and the rest, p being the split's share of cold targets (with AUC 1
the top group is exactly the cold-target users). The blend's weights are then fitted on
the calibration users exactly as `iisan train` fits them (the same users, grids, coordinate
ascent and criterion, all groups together then each on its own), and test is ranked with
its users grouped by their own draw of the predictor. The first row is the run's blend as
trained (groups by the share of rare items in the history, whose AUC for cold targets the
header gives). An oracle on the test labels, so an analysis, never a method.

It holds two score rows per user (8 bytes a user and item): about 2 GB for Scientific's
12,000 test users and 20,000 items; about a minute per predictor on one core.

    python bench/cold_knowledge.py RUN_DIR [RUN_DIR ...] [--auc 0.65,0.8,0.9,0.95,1] [--json]
"""

from __future__ import annotations

import argparse
import json
from statistics import NormalDist

import numpy as np
import torch

from iisan.assemble import assemble_run
from iisan.evaluation.metrics import MISS, metrics_from_ranks
from iisan.evaluation.ranking import item_embeddings
from iisan.evaluation.slices import SLICE_NAMES, slice_of
from iisan.scoring.calibrate import SELECT_METRIC, _calibration_users, _Criterion, _score_rows, fit_weights

GROUPS = 3


def auc(feature: np.ndarray, positive: np.ndarray) -> float | None:
    """The probability that a random positive's feature exceeds a random negative's (ties half)."""
    if positive.all() or not positive.any():
        return None
    ranks = np.empty(len(feature))
    order = np.argsort(feature, kind="stable")
    ranks[order] = np.arange(1, len(feature) + 1)
    for value in np.unique(feature):  # mid-ranks for ties
        tied = feature == value
        ranks[tied] = ranks[tied].mean()
    pos = int(positive.sum())
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * (len(feature) - pos)))


def simulated_groups(cold: np.ndarray, target_auc: float, rng: np.random.Generator) -> np.ndarray:
    """Group 2: the top p of z, group 1 the next p, group 0 the rest (p: the share of cold users)."""
    sigma = 0.0 if target_auc >= 1 else 1 / (np.sqrt(2) * NormalDist().inv_cdf(target_auc))
    z = cold + sigma * rng.standard_normal(len(cold)) + 1e-9 * rng.standard_normal(len(cold))  # no ties
    share = cold.mean()
    low, high = np.quantile(z, [max(0.0, 1 - 2 * share), 1 - share])
    return np.where(z > high, 2, np.where(z > low, 1, 0))


def criterion(model, items, split, users, groups: np.ndarray) -> _Criterion:
    """Calibration's criterion (overall NDCG@10) over ``users`` of ``split`` in ``groups``."""
    members = [np.flatnonzero(groups == g) for g in range(max(GROUPS, model.blend.groups))]
    prior_features = items[:, model.dim + model.blend.content.dim:]
    rows = _score_rows(model, items, split, users, include_history=False)
    return _Criterion(*rows, prior_features, members, [torch.ones(len(users), dtype=torch.bool)])


def test_row(score: _Criterion, setting, slices: np.ndarray) -> dict:
    ranks = torch.full((len(slices),), MISS, dtype=torch.long)
    for group, weights in enumerate(setting):
        ranks[score.positions[group]] = score.ranks_of(group, weights)
    row = {"all": round(metrics_from_ranks(ranks, (10,))["ndcg@10"], 4)}
    for name in SLICE_NAMES:
        mine = torch.from_numpy(slices == name)
        row[name] = round(metrics_from_ranks(ranks[mine], (10,))["ndcg@10"], 4) if mine.any() else None
    return row


def knowledge(run_dir: str, aucs: list[float]) -> dict:
    parts = assemble_run(run_dir)
    model = parts.scorer  # the model with its scorer
    if model is parts.model:
        raise SystemExit(f"{run_dir}: no calibrated blend (trained with --no-blend or a method without one)")
    blend = model.blend
    items = item_embeddings(model, parts.source, parts.dataset.num_items)
    seed = int(parts.config.seed)
    valid, test = parts.splits.valid, parts.splits.test
    valid_users = _calibration_users(len(valid.targets), items.shape[0], seed)
    test_users = np.arange(len(test.targets))
    valid_slices, test_slices = slice_of(valid.target_counts[valid_users]), slice_of(test.target_counts)
    own = {name: blend.user_groups(torch.from_numpy(split.inputs[users])).numpy()
           for name, split, users in (("valid", valid, valid_users), ("test", test, test_users))}
    share = blend.rare_share(torch.from_numpy(test.inputs)).double().numpy()
    fitted = tuple((blend.alpha[g].item(), *blend.priors[g].tolist()) for g in range(blend.groups))
    blend.alpha.fill_(1.0)  # queries then carry [u / sd_u, h / sd_h, 0...], as calibration reads them
    blend.priors.zero_()
    rows = []
    for target_auc in [None, *aucs]:
        if target_auc is None:
            groups = own
        else:
            rng = np.random.default_rng([seed, round(target_auc * 1000)])
            groups = {"valid": simulated_groups((valid_slices == "cold").astype(float), target_auc, rng),
                      "test": simulated_groups((test_slices == "cold").astype(float), target_auc, rng)}
        valid_score = criterion(model, items, valid, valid_users, groups["valid"])
        setting = fit_weights(valid_score, GROUPS, GROUPS)[1] if target_auc is not None else fitted
        test_score = criterion(model, items, test, test_users, groups["test"])
        predictor = "the run's groups (rare share)" if target_auc is None else f"AUC {target_auc:g}"
        rows.append({"predictor": predictor,
                     "valid": round(valid_score(setting), 4), **test_row(test_score, setting, test_slices),
                     "weights": [list(w) for w in setting]})
    return {"rare_share_auc_for_cold": round(auc(share, test_slices == "cold") or float("nan"), 3),
            "cold_users": int((test_slices == "cold").sum()), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="blended run folders written by `iisan train`")
    parser.add_argument("--auc", default="0.65,0.8,0.9,0.95,1",
                        help="the simulated predictors' AUCs, comma-separated, each in (0.5, 1]")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    aucs = [float(value) for value in args.auc.split(",")]
    if not all(0.5 < value <= 1 for value in aucs):
        parser.error("--auc: each value must be above 0.5 and at most 1")
    torch.set_num_threads(1)
    results = {run: knowledge(run, aucs) for run in args.runs}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for run, result in results.items():
        print(f"{run} (test; {result['cold_users']} cold-target users; the history's rare share tells them "
              f"apart with AUC {result['rare_share_auc_for_cold']})")
        print(f"  {'groups of users from':<32} {'valid ' + SELECT_METRIC:>16} {'all':>7} "
              + " ".join(f"{name:>7}" for name in SLICE_NAMES))
        for row in result["rows"]:
            cells = " ".join(f"{row[name]:>7.4f}" if row[name] is not None else f"{'-':>7}"
                             for name in SLICE_NAMES)
            print(f"  {row['predictor']:<32} {row['valid']:>16.4f} {row['all']:>7.4f} {cells}")


if __name__ == "__main__":
    main()
