"""One table of accuracy and efficiency for the runs of ``bench/versa.sh``.

Run folders are named ``<label>-<seed>``. Per label: test HR@10 and NDCG@10 (mean ± std
over seeds, history excluded), trainable parameters counted from the model, the inter
tower's steps and width, and the median wall time of a cached training step at batch 64
(the first seed's weights, the same 20 batches for every label, after 3 warm-up steps;
measured here, one label after another in this process, so the times compare).

    python bench/versa_table.py RUNS_DIR [RUNS_DIR ...] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from iisan.assemble import assemble_run
from iisan.training.step import build_optimizer, training_step
from iisan.training.loss import log_popularity

BATCH = 64
WARMUP = 3


def cell(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {spread:.4f}"


def step_ms(run: Path, steps: int) -> tuple[float, int, str, str]:
    """Median step time, trainable parameters, ``steps x width`` of the inter tower and the
    intra towers' steps (text/image)."""
    parts = assemble_run(run)
    parts.model.train()
    optimizer = build_optimizer(parts)
    log_pop = log_popularity(torch.from_numpy(parts.splits.popularity))
    order = np.random.default_rng(0).permutation(len(parts.splits.train))
    times = []
    for step in range(WARMUP + steps):
        rows = order[(step * BATCH) % len(order):][:BATCH]
        start = time.perf_counter()
        training_step(parts, optimizer, parts.splits.train[rows], log_pop)
        if step >= WARMUP:
            times.append(time.perf_counter() - start)
    trainable = sum(p.numel() for p in parts.model.parameters() if p.requires_grad)
    tower = getattr(parts.model.item, "content", parts.model.item)  # inside the id offsets, when on
    inter = tower.inter_inputs
    shape = f"{inter.steps} x {inter.width}" if inter is not None else "-"
    layers = parts.model.layers
    intra = "/".join(str(len(layers[m])) if m in layers else "-" for m in ("text", "image"))
    return 1000 * statistics.median(times), trainable, shape, intra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)

    print("| encoders | variant | seeds | HR@10 | NDCG@10 | trainable params | layers text/image | inter steps x width | step ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for runs_dir in args.runs:
        groups: dict[str, list[Path]] = defaultdict(list)
        for run in sorted(runs_dir.iterdir()):
            if (run / "metrics.json").is_file():
                groups[run.name.rpartition("-")[0]].append(run)
        for label, runs in groups.items():
            tests = [json.loads((r / "metrics.json").read_text())["test"] for r in runs]
            ms, trainable, shape, intra = step_ms(runs[0], args.steps)
            seeds = ",".join(r.name.rpartition("-")[2] for r in runs)
            print(f"| {runs_dir.name} | {label} | {seeds} | {cell([t['hr@10'] for t in tests])} | "
                  f"{cell([t['ndcg@10'] for t in tests])} | {trainable:,} | {intra} | {shape} | {ms:.1f} |", flush=True)


if __name__ == "__main__":
    main()
