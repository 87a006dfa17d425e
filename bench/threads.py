"""CPU threads: how fast the cached training step, a full evaluation, encoding and the
quickstart run at each torch thread count, measured side by side.

On ../shared/datasets/amazon-scientific (text, minilm cache, modality text), project
defaults (TrainConfig), each job in a fresh process per thread count, thread counts
interleaved and each (job, threads) pair repeated --repeats times; the median is kept:

  - step: median wall time of one cached IISAN training step (after warm-up);
  - evaluate: item embeddings of the whole catalogue plus full ranking of the valid split;
  - encode: minilm over the first 1/--encode-shards of the catalogue (one shard), to a fresh cache;
  - quickstart: `iisan quickstart` end to end (prepare, encode, train, evaluate, recommend)
    with `--threads N`, and once with `--threads auto` (the project default).

    python bench/threads.py [--work bench/out/threads] [--threads 1,2] [--repeats 3] [--jobs step,evaluate,encode,quickstart]
                            [--busy N]

Run it on an idle machine; --busy N starts N processes that keep a core busy each for the
whole measurement (a neighbour competing for the cores), to see what `auto` does then.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOBS = ("step", "evaluate", "encode", "quickstart")


def child(job: str, work: Path, args: argparse.Namespace) -> float:
    """Seconds for ``job`` in this process (torch's thread count is already set)."""
    import numpy as np
    import torch

    from iisan.assemble import assemble
    from iisan.config import EncodeConfig, SideNetworkConfig, TrainConfig
    from iisan.evaluation.ranking import evaluate_split, item_embeddings
    from iisan.training.step import build_optimizer, training_step
    from iisan.training.loss import log_popularity

    dataset, cache = work / "scientific", work / "cache-minilm"
    if job == "encode":
        from iisan.cache.encode import encode

        with tempfile.TemporaryDirectory(dir=work) as folder:
            config = EncodeConfig(text_encoder="minilm", image_encoder=None)
            start = time.perf_counter()
            encode(dataset, Path(folder) / "cache", config, shard=(1, args.encode_shards))
            return time.perf_counter() - start
    parts = assemble(dataset, cache, TrainConfig(side=SideNetworkConfig(modality="text")))
    if job == "evaluate":
        start = time.perf_counter()
        items = item_embeddings(parts.model, parts.source, parts.dataset.num_items)
        evaluate_split(parts.model, items, parts.splits.valid)
        return time.perf_counter() - start
    optimizer = build_optimizer(parts)
    log_pop = log_popularity(torch.from_numpy(parts.splits.popularity))
    rng = np.random.default_rng(0)
    parts.model.train()
    size = parts.config.train_batch_size
    seconds = []
    for n in range(10 + args.steps):
        batch = parts.splits.train[rng.choice(len(parts.splits.train), size, replace=False)]
        start = time.perf_counter()
        training_step(parts, optimizer, batch, log_pop)
        if n >= 10:
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def measure(job: str, threads: str, work: Path, args: argparse.Namespace) -> float:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "IISAN_THREADS"):
        env.pop(name, None)
    if job == "quickstart":
        with tempfile.TemporaryDirectory(dir=work) as folder:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "iisan", "-q", "--threads", threads, "quickstart", "--out", folder],
                           check=True, env=env, stdout=subprocess.DEVNULL)
            return time.perf_counter() - start
    command = [sys.executable, __file__, "--child", job, "--threads", threads, "--work", str(work),
               "--steps", str(args.steps), "--encode-shards", str(args.encode_shards)]
    result = subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    return float(result.stdout.strip().splitlines()[-1])


def measure_all(args: argparse.Namespace, counts: list[str], jobs: list[str]) -> dict[tuple[str, str], list[float]]:
    """Seconds per (job, threads), thread counts interleaved within each repeat."""
    samples: dict[tuple[str, str], list[float]] = {}
    for repeat in range(args.repeats):
        for job in jobs:
            # quickstart also runs with the default setting, to check it against one thread
            for threads in counts + (["auto"] if job == "quickstart" else []):
                seconds = measure(job, threads, args.work, args)
                samples.setdefault((job, threads), []).append(seconds)
                print(f"repeat {repeat + 1}: {job:<10} threads {threads:>4}: {seconds:.4f} s", flush=True)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench/out/threads"))
    parser.add_argument("--threads", default=",".join(str(n) for n in sorted({1, os.cpu_count() or 1})),
                        help="comma-separated thread counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--encode-shards", type=int, default=10, help="encode times 1/N of the catalogue")
    parser.add_argument("--jobs", default=",".join(JOBS))
    parser.add_argument("--busy", type=int, default=0, help="busy neighbour processes during the measurement")
    parser.add_argument("--child", choices=JOBS)
    args = parser.parse_args()
    if args.child:
        from iisan.threads import use_threads

        use_threads(args.threads)
        print(child(args.child, args.work, args))
        return

    from train_step import build_inputs  # bench/ is on sys.path: the same inputs as the step benchmark

    args.work.mkdir(parents=True, exist_ok=True)
    build_inputs(args.work)
    neighbours = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        samples = measure_all(args, args.threads.split(","), args.jobs.split(","))
    finally:
        for process in neighbours:
            process.kill()
    rows = [{"job": job, "threads": threads, "median_seconds": statistics.median(values), "samples": values}
            for (job, threads), values in samples.items()]
    for row in rows:
        one = samples.get((row["job"], "1"))
        row["vs_one_thread"] = row["median_seconds"] / statistics.median(one) if one else None
    report = {"cpu_count": os.cpu_count(), "busy_neighbours": args.busy, "rows": rows}
    (args.work / f"threads-busy{args.busy}.json").write_text(json.dumps(report, indent=2))
    print(f"\n{args.busy} busy neighbours\n| job | threads | median s | vs 1 thread |\n| --- | --- | --- | --- |")
    for row in rows:
        ratio = f"{row['vs_one_thread']:.2f}" if row["vs_one_thread"] else ""
        print(f"| {row['job']} | {row['threads']} | {row['median_seconds']:.4f} | {ratio} |")


if __name__ == "__main__":
    main()
