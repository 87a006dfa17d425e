"""``iisan data stats``: what a prepared dataset looks like."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from iisan.data.dataset import PreparedDataset

HEAD_ITEMS = 10


def dataset_stats(dataset: PreparedDataset) -> dict[str, Any]:
    """Counts, sequence-length histogram, popularity head and tail, modality coverage.

    Returns a JSON-ready dict.
    """
    lengths = dataset.sequences["items"].list.len()
    histogram = lengths.value_counts(sort=False).sort(lengths.name)
    flat, _ = dataset.sequence_arrays()
    popularity = np.bincount(flat, minlength=dataset.num_items + 1)[1:]  # index 0 is padding
    ranked = np.sort(popularity)[::-1]
    total = int(popularity.sum())
    n_items = dataset.num_items

    def share_of_top(fraction: float) -> float:
        top = max(1, int(round(n_items * fraction)))
        return float(ranked[:top].sum() / total) if total else 0.0

    head_ids = np.argsort(-popularity, kind="stable")[:HEAD_ITEMS] + 1
    head = (
        pl.DataFrame({"item_id": head_ids.astype(np.int32), "count": popularity[head_ids - 1]})
        .join(dataset.items.select("item_id", "key", "text"), on="item_id", how="left", maintain_order="left")
    )
    items = dataset.items
    return {
        "dataset": str(dataset.root),
        "format": dataset.meta.get("format"),
        "synthetic": bool(dataset.meta.get("synthetic")),
        "counts": {
            "users": dataset.sequences.height,
            "items": n_items,
            "interactions": total,
        },
        "sequence_length": {
            "min": int(lengths.min()),
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
            "histogram": {int(k): int(v) for k, v in histogram.iter_rows()},
        },
        "popularity": {
            "max": int(ranked[0]),
            "median": float(np.median(popularity)),
            "items_seen_once": int((popularity == 1).sum()),
            "share_top_1pct": share_of_top(0.01),
            "share_top_10pct": share_of_top(0.10),
            "head": head.to_dicts(),
        },
        "modalities": {
            "share_with_text": float(items["text"].is_not_null().mean()),
            "share_with_image": float(items["image"].is_not_null().mean()),
        },
        "density": total / (dataset.sequences.height * n_items),
    }
