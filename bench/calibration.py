"""The blend's calibration as training runs it, against the same fit scoring every user and
every item for every setting (how it ran before 2026-12-02), on one finished run.

The two differ only in the criterion's inner loop (iisan.scoring.calibrate._Criterion
decides most users and items from bounds over the grids' box), so the fitted weights and
criteria must agree exactly; the script checks that and reports both times and their
ratio. The exhaustive reference is written out here, not imported, so the comparison keeps
working whatever the library's criterion becomes.

    python bench/calibration.py RUN_DIR [--whiten auto|on|off] [--select overall|balanced] [--json]

Threads: set OMP_NUM_THREADS (one thread is what the results docs quote).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from iisan.assemble import assemble_run
from iisan.evaluation.metrics import metrics_from_ranks, pessimistic_ranks
from iisan.scoring import calibrate


class ExhaustiveCriterion:
    """The criterion ranking every calibration user over every item, per setting."""

    def __init__(self, trained_rows, floor_rows, targets, features, members, judged) -> None:
        self.chunks = list(zip(trained_rows, floor_rows, targets))
        self.features, self.members, self.judged = features, members, judged
        self.users = sum(len(m) for m in members)
        self.group_ranks: dict = {}
        self.tried: dict = {}

    def ranks_of(self, group, weights):
        if (group, weights) not in self.group_ranks:
            prior = self.features @ torch.tensor(weights[1:], dtype=self.features.dtype)
            ranks, mine, start = [], self.members[group], 0
            for trained, floor, target in self.chunks:
                rows = mine[(mine >= start) & (mine < start + len(target))] - start
                start += len(target)
                if len(rows):
                    rows = torch.from_numpy(rows)
                    ranks.append(pessimistic_ranks(trained[rows] + weights[0] * floor[rows] + prior, target[rows]))
            self.group_ranks[group, weights] = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
        return self.group_ranks[group, weights]

    def __call__(self, setting) -> float:
        if setting not in self.tried:
            ranks = torch.zeros(self.users, dtype=torch.long)
            for group, weights in enumerate(setting):
                ranks[self.members[group]] = self.ranks_of(group, weights)
            self.tried[setting] = float(np.mean([metrics_from_ranks(ranks[users], (10,))["ndcg@10"]
                                                 for users in self.judged]))
        return self.tried[setting]


def fit(run_dir: str, whiten: str, select: str, criterion) -> tuple[dict, float]:
    """The blend of ``run_dir`` fitted with ``criterion`` as calibration's; (result, seconds)."""
    parts = assemble_run(run_dir)
    library = calibrate._Criterion
    calibrate._Criterion = criterion
    try:
        start = time.perf_counter()
        result = calibrate.calibrate_blend(parts.scorer, parts.source, parts.dataset.num_items, parts.splits.valid,
                                           seed=parts.config.seed, select=select, whiten=whiten)
        return result, time.perf_counter() - start
    finally:
        calibrate._Criterion = library


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--whiten", default="auto", choices=calibrate.WHITENINGS)
    parser.add_argument("--select", default="overall", choices=calibrate.SELECTIONS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    library, library_s = fit(args.run, args.whiten, args.select, calibrate._Criterion)
    exhaustive, exhaustive_s = fit(args.run, args.whiten, args.select, ExhaustiveCriterion)
    if library != exhaustive:
        raise SystemExit(f"the two fits differ:\n  library    {library}\n  exhaustive {exhaustive}")
    report = {"run": args.run, "whiten": args.whiten, "select": args.select, "users": library["users"],
              "settings": library["evaluations"], "library_s": round(library_s, 2),
              "exhaustive_s": round(exhaustive_s, 2), "speedup": round(exhaustive_s / library_s, 2),
              "valid_after": library["valid_after"], "threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{args.run}: {report['users']:,} users, {report['settings']} group settings; the same weights and "
              f"criteria ({report['valid_after']:.4f}); calibration {library_s:.1f} s, exhaustive {exhaustive_s:.1f} s: "
              f"{report['speedup']:.1f}x ({report['threads']} thread(s))")


if __name__ == "__main__":
    main()
