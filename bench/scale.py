"""A 1,000,000-item catalogue on one machine: cache on disk, training and full-ranking
evaluation in bounded memory, side by side with a 20,000-item catalogue.

For each catalogue size, in a fresh subprocess (so its peak memory is its own):

  1. a synthetic text-only source (``iisan-tsv``): every item appears in some user's
     sequence, users have 10 items each; then ``prepare``;
  2. ``encode`` with a random text encoder of minilm's shape (6 layers x 384, so the
     cache is [N + 1, 7, 384] float16, about 5.4 GB at 1M items) built once with
     ``build_tiny_encoder``: the point is data movement, not features, so titles are
     short (4 tokens) to keep the forward pass cheap;
  3. ``--steps`` IISAN-cached training steps (modality text, batch 64): median step time;
  4. full-ranking evaluation of ``--eval-users`` test users against every item, including
     computing every item embedding once.

Reported per stage: seconds and peak RSS (VmHWM, reset between stages); the cache's
size on disk; and the 1M/20k step-time ratio. Targets: peak RSS under 4 GB throughout,
step time within 2x of the 20k-item case.

    python bench/scale.py [--items 1000000] [--reference-items 20000] [--users 150000]
                          [--steps 200] [--eval-users 10000] [--work bench/out/scale] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from iisan.efficiency import reset_peak_rss, rss_mb

SEQUENCE_LENGTH = 10
BATCH_SIZE = 64
WARMUP_STEPS = 10


def write_source(folder: Path, items: int, users: int, seed: int) -> None:
    """Every item once in a random order, then random items, cut into users of 10 items."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    slots = users * SEQUENCE_LENGTH
    if slots < items:
        raise SystemExit(f"{users} users x {SEQUENCE_LENGTH} items cannot cover {items} items")
    sequence = np.concatenate([rng.permutation(items), rng.integers(0, items, size=slots - items)])
    sequence = sequence[rng.permutation(slots)].reshape(users, SEQUENCE_LENGTH) + 1
    words = np.array(["red", "blue", "lamp", "mug", "pack", "set", "model", "the"])
    titles = rng.integers(0, len(words), size=(items, 2))
    with open(folder / "items.tsv", "w", encoding="utf-8") as handle:
        for item in range(items):
            handle.write(f"i{item + 1}\t{words[titles[item, 0]]} {words[titles[item, 1]]}\n")
    with open(folder / "users.tsv", "w", encoding="utf-8") as handle:
        for user in range(users):
            handle.write(f"u{user}\t" + " ".join(f"i{i}" for i in sequence[user]) + "\n")


def run_size(work: Path, items: int, users: int, steps: int, eval_users: int, encoder: Path) -> dict:
    """Everything for one catalogue size, in this process (the parent runs it in a child)."""
    import torch

    from iisan.cache.encode import encode
    from iisan.config import EncodeConfig, PrepareConfig, SideNetworkConfig, TrainConfig, UserEncoderConfig
    from iisan.data import prepare
    from iisan.data.split import EvalSplit
    from iisan.evaluation.ranking import evaluate_split, item_embeddings
    from iisan.assemble import assemble
    from iisan.training.step import build_optimizer, training_step
    from iisan.training.loss import log_popularity

    report: dict = {"items": items, "users": users, "stages": {}}

    def stage(name: str, fn):
        reset_peak_rss()
        start = time.perf_counter()
        result = fn()
        report["stages"][name] = {"seconds": round(time.perf_counter() - start, 2),
                                  "peak_rss_mb": round(rss_mb("VmHWM"), 1)}
        return result

    source, dataset, cache = work / "source", work / "dataset", work / "cache"
    report["baseline_rss_mb"] = round(rss_mb("VmHWM"), 1)
    if not (dataset / "dataset.json").is_file():
        stage("source", lambda: write_source(source, items, users, seed=0))
        stage("prepare", lambda: prepare(source, dataset, PrepareConfig(format="iisan-tsv")))
    config = EncodeConfig(text_encoder=str(encoder), image_encoder=None, max_text_tokens=4, encode_batch_size=512,
                          workers=1)
    encoded = stage("encode", lambda: encode(dataset, cache, config))
    report["encode_items_per_second"] = encoded["modalities"]["text"]["items_per_second"]
    report["cache_gb"] = round(sum(p.stat().st_blocks * 512 for p in cache.iterdir()) / 1e9, 2)

    # an input of 7: each sequence of 10 is one training window (7 inputs + valid + test + one shift)
    train_config = TrainConfig(train_batch_size=BATCH_SIZE, side=SideNetworkConfig(modality="text"),
                               user=UserEncoderConfig(max_seq_len=SEQUENCE_LENGTH - 3))
    parts = stage("assemble", lambda: assemble(dataset, cache, train_config))
    optimizer = build_optimizer(parts)
    log_pop = log_popularity(torch.from_numpy(parts.splits.popularity))
    order = np.random.default_rng(1).permutation(len(parts.splits.train))
    batches = [parts.splits.train[order[s * BATCH_SIZE:(s + 1) * BATCH_SIZE]] for s in range(WARMUP_STEPS + steps)]
    step_seconds = []

    def train_steps():
        parts.model.train()
        for index, batch in enumerate(batches):
            start = time.perf_counter()
            training_step(parts, optimizer, batch, log_pop)
            if index >= WARMUP_STEPS:
                step_seconds.append(time.perf_counter() - start)

    stage("train", train_steps)
    report["step_ms_median"] = round(1000 * statistics.median(step_seconds), 2)
    report["step_ms_mean"] = round(1000 * statistics.mean(step_seconds), 2)

    test = parts.splits.test
    subset = EvalSplit(test.inputs[:eval_users], test.targets[:eval_users], test.flat,
                       test.history_start[:eval_users], test.history_end[:eval_users])
    embeddings = stage("item_embeddings",
                       lambda: item_embeddings(parts.model, parts.source, parts.dataset.num_items))
    metrics = stage("rank", lambda: evaluate_split(parts.model, embeddings, subset))
    report["eval_users"] = len(subset.targets)
    report["eval_seconds"] = round(report["stages"]["item_embeddings"]["seconds"] + report["stages"]["rank"]["seconds"], 2)
    report["hr@10"] = round(metrics["hr@10"], 5)
    report["peak_rss_mb"] = max(s["peak_rss_mb"] for s in report["stages"].values())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--reference-items", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=150_000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-users", type=int, default=10_000)
    parser.add_argument("--work", type=Path, default=Path("bench/out/scale"))
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "ITEMS"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    encoder = args.work / "encoder-6x384"
    if args.child:
        report = run_size(Path(args.child[0]), int(args.child[1]), args.users, args.steps, args.eval_users, encoder)
        print(json.dumps(report))
        return

    from iisan.encoders.tiny import build_tiny_encoder

    args.work.mkdir(parents=True, exist_ok=True)
    if not encoder.is_dir():
        build_tiny_encoder(encoder, "text", hidden=384, layers=6, heads=6)
    reports = {}
    for items in (args.reference_items, args.items):
        command = [sys.executable, __file__, "--child", str(args.work / f"items-{items}"), str(items),
                   "--users", str(args.users), "--steps", str(args.steps), "--eval-users", str(args.eval_users),
                   "--work", str(args.work)]
        result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
        if result.returncode:
            sys.exit(f"{items} items failed:\n{result.stderr[-4000:]}")
        reports[items] = json.loads(result.stdout.strip().splitlines()[-1])
    big, small = reports[args.items], reports[args.reference_items]
    summary = {"sizes": reports, "step_time_ratio": round(big["step_ms_median"] / small["step_ms_median"], 2)}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    header = ("items", "cache GB", "encode s", "items/s", "step ms", "eval s (users)", "peak RSS MB")
    print("| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for report in reports.values():
        print(f"| {report['items']:,} | {report['cache_gb']} | {report['stages']['encode']['seconds']} | "
              f"{report['encode_items_per_second']:,} | {report['step_ms_median']} | "
              f"{report['eval_seconds']} ({report['eval_users']:,}) | {report['peak_rss_mb']:,} |")
    print(f"\nstep time {args.items:,} / {args.reference_items:,} items: {summary['step_time_ratio']}x")
    for report in reports.values():
        stages = ", ".join(f"{k} {v['seconds']} s / {v['peak_rss_mb']:,} MB" for k, v in report["stages"].items())
        print(f"{report['items']:,} items: {stages}")


if __name__ == "__main__":
    main()
