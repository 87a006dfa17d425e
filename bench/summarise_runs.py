"""Mean and standard deviation of test metrics over seeds, one row per method.

Run folders are named ``<label>-<seed>``; each holds the ``metrics.json`` that
``iisan train`` wrote (and ``iisan evaluate --include-history`` extended). Two protocols:
history excluded from the ranking (the paper's, our default) and history ranked too
(``test_with_history``: RecBole 1.2.1's full-sort protocol for sequential models).
Prints a Markdown table; with ``--slices``, a second one: test NDCG@10 per popularity slice
of the target (cold: 0 occurrences in the training part, tail: 1-4, head: 5+), both protocols,
and a third, what the top-10 lists reach, for runs that ``iisan evaluate`` scored.

    python bench/summarise_runs.py RUNS_DIR [--peer LABEL HR@10 NDCG@10] [--slices]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

COLUMNS = [("valid", "ndcg@10"), ("test", "hr@10"), ("test", "ndcg@10"), ("test_with_history", "hr@10"),
           ("test_with_history", "ndcg@10")]


def cell(values: list[float], digits: int = 4) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"  # one seed: no spread to show
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path)
    parser.add_argument("--peer", nargs=3, metavar=("LABEL", "HR10", "NDCG10"),
                        help="a published figure measured with history ranked (RecBole's protocol)")
    parser.add_argument("--slices", action="store_true", help="also print test NDCG@10 per popularity slice")
    args = parser.parse_args()

    runs: dict[str, list[tuple[str, dict, list[dict]]]] = defaultdict(list)
    for run in sorted(args.runs.iterdir()):
        if (run / "metrics.json").is_file():
            label, _, seed = run.name.rpartition("-")
            log = run / "metrics.jsonl"  # absent for a method without training (knn)
            epochs = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
            runs[label].append((seed, json.loads((run / "metrics.json").read_text()), epochs))

    print("| method | seeds | valid NDCG@10 | HR@10 (history excluded) | NDCG@10 (history excluded) "
          "| HR@10 (history ranked) | NDCG@10 (history ranked) | epochs | s/epoch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, rows in runs.items():
        cells = [cell([m[split][key] for _, m, _ in rows if split in m]) for split, key in COLUMNS]
        epochs = cell([float(len(e)) for _, _, e in rows], 1)
        seconds = cell([statistics.fmean(x["seconds"] for x in e) for _, _, e in rows if e], 1)
        print(f"| {label} | {','.join(seed for seed, _, _ in rows)} | {' | '.join(cells)} | {epochs} | {seconds} |")
    if args.peer:
        label, hr, ndcg = args.peer
        print(f"| {label} | - | - | - | - | {float(hr):.4f} | {float(ndcg):.4f} | - | - |")
    if args.slices:
        print_slices(runs)
        print_exposure(runs)


SLICES = ("cold", "tail", "head")


def print_slices(runs: dict[str, list[tuple[str, dict, list[dict]]]]) -> None:
    """Test NDCG@10 overall and per slice, history excluded then ranked; user counts in the header."""
    if not any("slices" in m.get("test", {}) for rows in runs.values() for _, m, _ in rows):
        return
    header = ["all", *SLICES]
    print()
    columns = [f"{h} excl." for h in header] + [f"{h} ranked" for h in header]
    print("| method | users (cold / tail / head) | " + " | ".join(columns) + " |")
    print("|" + " --- |" * (2 + 2 * len(header)))
    for label, rows in runs.items():
        # A blended run also scored without its blend (`evaluate --unblended`): both rows.
        for suffix, name in (("_unblended", f"{label} (unblended)"), ("", label)):
            if not any(f"test{suffix}" in m for _, m, _ in rows):
                continue
            cells = []
            for split in (f"test{suffix}", f"test_with_history{suffix}"):
                cells.append(cell([m[split]["ndcg@10"] for _, m, _ in rows if split in m]))
                for part in SLICES:
                    cells.append(cell([m[split]["slices"][part].get("ndcg@10", 0.0) for _, m, _ in rows
                                       if "slices" in m.get(split, {})]))
            counts = next(m["test"]["slices"] for _, m, _ in rows if "slices" in m.get("test", {}))
            users = " / ".join(f"{counts[part]['users']:,}" for part in SLICES)
            print(f"| {name} | {users} | {' | '.join(cells)} |")


def print_exposure(runs: dict[str, list[tuple[str, dict, list[dict]]]]) -> None:
    """What the test users' top-10 lists hold (history excluded; `iisan evaluate` records it):
    the share of the catalogue they reach and of their places each item slice takes."""
    key = "exposure@10"
    if not any(key in m.get("test", {}) for rows in runs.values() for _, m, _ in rows):
        return
    print()
    print("| method | catalogue reached | places: cold | tail | head |")
    print("|" + " --- |" * 5)
    for label, rows in runs.items():
        for suffix, name in (("_unblended", f"{label} (unblended)"), ("", label)):
            reached = [m[f"test{suffix}"][key] for _, m, _ in rows if key in m.get(f"test{suffix}", {})]
            if reached:
                cells = [cell([r["reached"] for r in reached], 3)]
                cells += [cell([r[part]["places"] for r in reached], 3) for part in SLICES]
                print(f"| {name} | {' | '.join(cells)} |")
    shares = next(m["test"][key] for rows in runs.values() for _, m, _ in rows if key in m.get("test", {}))
    catalogue = " / ".join(f"{shares[part]['catalogue']:.3f}" for part in SLICES)
    print(f"\nThe catalogue's shares (cold / tail / head): {catalogue}")


if __name__ == "__main__":
    main()
