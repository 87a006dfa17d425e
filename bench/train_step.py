"""Training-step time, peak memory, epoch time and full-evaluation time of IISAN-cached.

On ../shared/datasets/amazon-scientific (text, minilm cache, modality text), batch 64:
  - step: median and mean wall time of one optimisation step (after warm-up), with the
    item tower, user encoder, in-batch loss, backward and AdamW;
  - epoch: wall time of one full training epoch (every training user once);
  - evaluation: full ranking of the test split, 12,076 users x 20,314 items, including
    computing every item embedding once;
  - peak RSS of this process (it holds the memory-mapped cache pages it touched);
  - side by side, the step time of the same model in uncached mode (minilm in the graph
    under no_grad, same batches): what the cache saves per step;
  - side by side, the step with AdamW's fused update (the default since 2026-12-02)
    against its for-loop form (torch's CPU default, which training used before).

    python bench/train_step.py [--work bench/out/train] [--steps 100] [--uncached-steps 10] [--unfused-steps 100]
                               [--train-batch-size 64]

The cache is built once in --work (about a minute) and reused by later runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from iisan.cache.encode import encode
from iisan.config import EncodeConfig, PrepareConfig, SideNetworkConfig, TrainConfig
from iisan.data import prepare
from iisan.evaluation.ranking import evaluate_split, item_embeddings
from iisan.assemble import assemble
from iisan.training.step import build_optimizer, training_step
from iisan.training.loss import log_popularity

SCIENTIFIC = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "amazon-scientific"


def build_inputs(work: Path) -> tuple[Path, Path]:
    dataset, cache = work / "scientific", work / "cache-minilm"
    if not (dataset / "dataset.json").is_file():
        prepare(SCIENTIFIC, dataset, PrepareConfig(format="iisan-tsv", keep_last=13))
    encode(dataset, cache, EncodeConfig(text_encoder="minilm", image_encoder=None))  # resumes; no-op when complete
    return dataset, cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench/out/train"))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--uncached-steps", type=int, default=10)
    parser.add_argument("--unfused-steps", type=int, default=100)
    parser.add_argument("--train-batch-size", type=int, default=64)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    dataset, cache = build_inputs(args.work)

    config = TrainConfig(train_batch_size=args.train_batch_size, side=SideNetworkConfig(modality="text"))
    parts = assemble(dataset, cache, config)
    optimizer = build_optimizer(parts)
    log_pop = log_popularity(torch.from_numpy(parts.splits.popularity))
    train_ids = parts.splits.train
    rng = np.random.default_rng(0)
    parts.model.train()

    def random_batch() -> np.ndarray:
        return train_ids[rng.choice(len(train_ids), args.train_batch_size, replace=False)]

    for _ in range(10):  # warm-up: allocator, kernels, page cache
        training_step(parts, optimizer, random_batch(), log_pop)
    step_seconds = []
    for _ in range(args.steps):
        batch = random_batch()
        start = time.perf_counter()
        training_step(parts, optimizer, batch, log_pop)
        step_seconds.append(time.perf_counter() - start)

    order = rng.permutation(len(train_ids))
    start = time.perf_counter()
    for first in range(0, len(order), args.train_batch_size):
        training_step(parts, optimizer, train_ids[order[first : first + args.train_batch_size]], log_pop)
    epoch_seconds = time.perf_counter() - start

    evals = []
    for _ in range(3):
        start = time.perf_counter()
        items = item_embeddings(parts.model, parts.source, parts.dataset.num_items)
        evaluate_split(parts.model, items, parts.splits.test, batch_size=config.eval_user_chunk)
        evals.append(time.perf_counter() - start)

    cached_peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # training + evaluation

    def paired(runs: list, steps: int) -> list[list[float]]:
        """Seconds per step of each (parts, optimizer) in ``runs`` on the same batches, in turn,
        so all see the same machine state; the first round (warm-up) left out."""
        rounds = []
        for _ in range(steps + 1):
            batch = random_batch()
            timed = []
            for run, run_optimizer in runs:
                start = time.perf_counter()
                training_step(run, run_optimizer, batch, log_pop)
                timed.append(time.perf_counter() - start)
            rounds.append(timed)
        return rounds[1:]  # the first uncached step loads and warms the encoder

    uncached = assemble(dataset, cache, dataclasses.replace(config, mode="uncached"))
    uncached_optimizer = build_optimizer(uncached)
    uncached.model.train()
    pairs = paired([(parts, optimizer), (uncached, uncached_optimizer)], args.uncached_steps)
    peak_rss_mb_after_uncached = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del uncached, uncached_optimizer

    unfused = assemble(dataset, cache, config)
    unfused_optimizer = build_optimizer(unfused)
    for group in unfused_optimizer.param_groups:
        group["fused"] = False  # AdamW then takes its for-loop form, as on the CPU before
    unfused.model.train()
    optimizer_pairs = paired([(parts, optimizer), (unfused, unfused_optimizer)], args.unfused_steps)

    report = {
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.train_batch_size,
        "users": len(train_ids),
        "items": parts.dataset.num_items,
        "trainable_parameters": sum(p.numel() for p in parts.model.parameters() if p.requires_grad),
        "step_ms_median": round(1000 * statistics.median(step_seconds), 2),
        "step_ms_mean": round(1000 * statistics.fmean(step_seconds), 2),
        "epoch_seconds": round(epoch_seconds, 2),
        "full_test_eval_seconds": [round(s, 2) for s in evals],
        "full_test_eval_seconds_best": round(min(evals), 2),
        "peak_rss_mb_cached": round(cached_peak_rss_mb, 1),
        "paired_step_ms_cached_median": round(1000 * statistics.median(p[0] for p in pairs), 2),
        "paired_step_ms_uncached_median": round(1000 * statistics.median(p[1] for p in pairs), 2),
        "uncached_over_cached_step_ratio": round(statistics.median(p[1] for p in pairs)
                                                 / statistics.median(p[0] for p in pairs), 1),
        "peak_rss_mb_after_uncached": round(peak_rss_mb_after_uncached, 1),
        "paired_step_ms_fused_median": round(1000 * statistics.median(p[0] for p in optimizer_pairs), 2),
        "paired_step_ms_for_loop_median": round(1000 * statistics.median(p[1] for p in optimizer_pairs), 2),
        "fused_over_for_loop_step_ratio": round(statistics.median(p[0] for p in optimizer_pairs)
                                                / statistics.median(p[1] for p in optimizer_pairs), 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
