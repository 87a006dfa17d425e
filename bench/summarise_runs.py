"""Mean and standard deviation of test metrics over seeds, one row per method.

Run folders are named ``<label>-<seed>``; each holds the ``metrics.json`` that
``iisan train`` wrote. Prints a Markdown table.

    python bench/summarise_runs.py RUNS_DIR [--peer LABEL HR@10 NDCG@10]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path)
    parser.add_argument("--peer", nargs=3, metavar=("LABEL", "HR10", "NDCG10"))
    args = parser.parse_args()

    results: dict[str, list[dict]] = defaultdict(list)
    for run in sorted(args.runs.iterdir()):
        metrics = run / "metrics.json"
        if metrics.is_file():
            label, _, seed = run.name.rpartition("-")
            epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            results[label].append({"seed": seed, **json.loads(metrics.read_text())["test"],
                                   "epochs": len(epochs), "s_per_epoch": statistics.fmean(e["seconds"] for e in epochs)})

    print("| method | seeds | test HR@10 | test NDCG@10 | test MRR | epochs | s/epoch (train) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, rows in results.items():
        def cell(key: str, digits: int = 4) -> str:
            values = [r[key] for r in rows]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.fmean(values):.{digits}f} ± {spread:.{digits}f}"
        print(f"| {label} | {','.join(r['seed'] for r in rows)} | {cell('hr@10')} | {cell('ndcg@10')} | "
              f"{cell('mrr')} | {cell('epochs', 1)} | {cell('s_per_epoch', 1)} |")
    if args.peer:
        label, hr, ndcg = args.peer
        print(f"| {label} | - | {float(hr):.4f} | {float(ndcg):.4f} | - | - | - |")


if __name__ == "__main__":
    main()
