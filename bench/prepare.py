"""Throughput and peak memory of `iisan prepare --format csv` on a large synthetic file.

Writes a 5,000,000-interaction CSV (1,000,000 users, 200,000 items; Zipf-like item
popularity, random timestamps) plus an items CSV, then runs prepare in a fresh
subprocess so its peak RSS is its own. Reports interactions per second for the prepare
call alone and for the whole command including interpreter start-up.

    python bench/prepare.py [--interactions 5000000] [--users 1000000] [--items 200000] [--out bench/out/prepare]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

CHILD = """
import json, resource, sys, time
from iisan.config import PrepareConfig
from iisan.data import prepare
start = time.perf_counter()
meta, problems = prepare(sys.argv[1], sys.argv[2], PrepareConfig(format="csv"))
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "counts": meta["counts"], "filtered": meta["filtered"],
                  "problems": problems.total,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_source(folder: Path, interactions: int, users: int, items: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, size=interactions)
    item = np.minimum(rng.zipf(1.2, size=interactions) - 1, items - 1)  # long-tailed popularity
    item = rng.permutation(items)[item]
    ts = rng.integers(1_500_000_000, 1_700_000_000, size=interactions)
    table = pa.table({
        "user": pa.array(np.char.add("u", user.astype(str))),
        "item": pa.array(np.char.add("i", item.astype(str))),
        "timestamp": ts,
    })
    pacsv.write_csv(table, folder / "interactions.csv")
    ids = np.arange(items)
    pacsv.write_csv(
        pa.table({"item": np.char.add("i", ids.astype(str)),
                  "text": np.char.add("Synthetic product number ", ids.astype(str))}),
        folder / "items.csv",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactions", type=int, default=5_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/out/prepare"))
    args = parser.parse_args()

    source = args.out / "source"
    if not (source / "interactions.csv").exists():
        start = time.perf_counter()
        write_source(source, args.interactions, args.users, args.items, args.seed)
        print(f"wrote source in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    size_mb = (source / "interactions.csv").stat().st_size / 2**20

    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", CHILD, str(source), str(args.out / "dataset")],
                           check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    result = json.loads(child.stdout.strip().splitlines()[-1])
    children_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    report = {
        "interactions_in_file": args.interactions,
        "csv_mb": round(size_mb, 1),
        "prepare_seconds": round(result["seconds"], 2),
        "command_seconds_with_startup": round(wall, 2),
        "interactions_per_second": round(args.interactions / result["seconds"]),
        "interactions_per_second_with_startup": round(args.interactions / wall),
        "peak_rss_mb": round(max(result["peak_rss_mb"], children_rss)),
        "kept": result["counts"],
        "filtered": result["filtered"],
        "problems": result["problems"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
