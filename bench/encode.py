"""Overhead of `iisan encode` over the bare encoder forward pass, for text and images.

In one process and on the same items:
  (a) the floor: the encoder's forward pass alone (output_hidden_states, the encoder's own pooling),
      over the same batches encode uses, with inputs prepared outside the timer,
      measured before and after (b) and the faster run kept;
  (b) `encode` itself: reading, tokenising or decoding, the forward pass, pooling, and
      writing the memory-mapped cache with its flags and manifest.
Reports items/s for both, the overhead ratio b/a, and cache size per 1,000 items.

    python bench/encode.py [--text-dataset DIR] [--image-items 1000] [--image-size 224] [--out bench/out/encode]

Text defaults to ../shared/datasets/amazon-scientific with minilm; images to a synthetic
set with real PNGs and dinov2-small.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from iisan.cache.encode import encode
from iisan.config import EncodeConfig, PrepareConfig
from iisan.data import PreparedDataset, prepare
from iisan.data.synth import SynthConfig, synthesize
from iisan.encoders.layer_states import FrozenEncoder

SCIENTIFIC = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "amazon-scientific"


def text_floor(dataset: PreparedDataset, encoder: FrozenEncoder, config: EncodeConfig) -> float:
    texts = dataset.items["text"].fill_null("").to_list()
    tokens = encoder.tokenize(texts, config.max_text_tokens)
    order = np.argsort([len(t) for t in tokens], kind="stable")
    batches = [encoder.collate_tokens([tokens[i] for i in order[s : s + config.encode_batch_size]])
               for s in range(0, len(order), config.encode_batch_size)]
    encoder.pooled_hidden_states(batches[0], "cls")  # warm-up
    start = time.perf_counter()
    pooling = encoder.resolve_pooling(config.pooling_for("text"))
    for inputs in batches:
        encoder.pooled_hidden_states(inputs, pooling)
    return time.perf_counter() - start


def image_floor(dataset: PreparedDataset, encoder: FrozenEncoder, config: EncodeConfig) -> float:
    paths = [dataset.root / p for p in dataset.items["image"].drop_nulls().to_list()]
    elapsed = 0.0
    warm = False
    pooling = encoder.resolve_pooling(config.pooling_for("image"))
    for s in range(0, len(paths), config.encode_batch_size):
        pixels = np.stack([encoder.preprocess_image(p.read_bytes(), config.image_size)
                           for p in paths[s : s + config.encode_batch_size]])
        inputs = {"pixel_values": torch.from_numpy(pixels)}
        if not warm:
            encoder.pooled_hidden_states(inputs, "cls")
            warm = True
        start = time.perf_counter()
        encoder.pooled_hidden_states(inputs, pooling)
        elapsed += time.perf_counter() - start
    return elapsed


def measure(modality: str, dataset_dir: Path, config: EncodeConfig, out: Path) -> dict:
    dataset = PreparedDataset.load(dataset_dir)
    name = config.text_encoder if modality == "text" else config.image_encoder
    encoder = FrozenEncoder.load(name, modality)
    n = dataset.num_items if modality == "text" else int(dataset.items["image"].is_not_null().sum())
    run_floor = text_floor if modality == "text" else image_floor
    # The floor is measured before and after encode and the faster kept: the strictest
    # comparison, whatever warms up (allocator, oneDNN kernels) during the first pass.
    floor_before = run_floor(dataset, encoder, config)
    cache = out / f"cache-{modality}"
    shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    encode(dataset_dir, cache, config)
    full = time.perf_counter() - start
    floor_after = run_floor(dataset, encoder, config)
    floor = min(floor_before, floor_after)
    size = sum(f.stat().st_size for f in cache.iterdir() if f.name.startswith(modality))
    return {
        "encoder": name, "items": n, "layers": encoder.num_layers + 1, "width": encoder.hidden_size,
        "forward_only_items_per_s": round(n / floor, 1),
        "forward_only_items_per_s_before_and_after": [round(n / floor_before, 1), round(n / floor_after, 1)],
        "encode_items_per_s": round(n / full, 1),
        "overhead_ratio": round(full / floor, 3),
        "cache_mb_per_1000_items": round(size / 2**20 / dataset.num_items * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-dataset", type=Path, default=None, help="prepared dataset (default: Scientific)")
    parser.add_argument("--text-encoder", default="minilm")
    parser.add_argument("--image-encoder", default="dinov2-small")
    parser.add_argument("--image-items", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--encode-batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("bench/out/encode"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    text_dataset = args.text_dataset
    if text_dataset is None:
        text_dataset = args.out / "scientific"
        prepare(SCIENTIFIC, text_dataset, PrepareConfig(format="iisan-tsv", keep_last=13))
    synthesize(args.out / "synth-src", SynthConfig(items=args.image_items, users=args.image_items, image_size=256,
                                                   categories=10, colours=8, seed=0), force=True)
    prepare(args.out / "synth-src", args.out / "synth", PrepareConfig(format="iisan-tsv", keep_last=13))

    config = EncodeConfig(text_encoder=args.text_encoder, image_encoder=None, encode_batch_size=args.encode_batch_size)
    report = {"torch_threads": torch.get_num_threads(),
              "text": measure("text", text_dataset, config, args.out)}
    config = EncodeConfig(text_encoder=None, image_encoder=args.image_encoder, encode_batch_size=args.encode_batch_size,
                          image_size=args.image_size)
    report["image"] = measure("image", args.out / "synth", config, args.out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
