"""``iisan evaluate``: score a trained run on one split and record it in ``metrics.json``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from iisan.config import SPLITS
from iisan.errors import ConfigError
from iisan.evaluation.exposure import EXPOSURE_K
from iisan.evaluation.ranking import DEFAULT_KS, evaluate_split, item_embeddings
from iisan.fileio import read_json_object, write_json_atomic

METRICS_FILE = "metrics.json"


def metrics_key(split: str, include_history: bool, unblended: bool = False) -> str:
    """The key a result is stored under: ``test``, ``test_with_history`` when history is
    ranked too, ``..._unblended`` when a blended run was scored without its blend."""
    return f"{split}{'_with_history' if include_history else ''}{'_unblended' if unblended else ''}"


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    ks: tuple[int, ...] = DEFAULT_KS,
    include_history: bool = False,
    batch_size: int | None = None,
    device: str = "auto",
    unblended: bool = False,
) -> dict[str, Any]:
    """Full-ranking metrics of a run's best weights on ``split``, computed on ``device``
    (see :func:`iisan.devices.pick_device`).

    The result is merged into ``RUN_DIR/metrics.json`` under :func:`metrics_key`, so
    evaluating another split or setting keeps the earlier entries. ``unblended`` scores a
    blended run with its trained model alone (:mod:`iisan.models.blend`), to see what the
    blend adds.

    Returns:
        ``{"metrics": {...}, "slices": {"cold": {..., "users": n}, "tail": ..., "head": ...},
        "exposure": {"k": 10, "reached": r, "cold": {...}, ...}, "users": U, "items": N,
        "seconds": t}`` (slices: :mod:`iisan.evaluation.slices`; what the top-10 lists hold:
        :mod:`iisan.evaluation.exposure`).
    """
    from iisan.assemble import assemble_run
    from iisan.devices import pick_device

    if split not in SPLITS:
        raise ConfigError(f"split must be valid or test, got {split!r}")
    if not ks or min(ks) < 1:
        raise ConfigError(f"k values must be positive integers, got {ks}")
    run_dir = Path(run_dir)
    parts = assemble_run(run_dir, device=pick_device(device))
    if unblended:
        if not parts.model.blending:
            raise ConfigError(f"--unblended: {run_dir} has no calibrated blend (trained with --no-blend, "
                              "or a method without one); its plain scores are its metrics")
        parts.model.blend.active.fill_(False)
    start = time.perf_counter()
    items = item_embeddings(parts.model, parts.source, parts.dataset.num_items)
    target = getattr(parts.splits, split)
    metrics = evaluate_split(parts.model, items, target, ks=tuple(sorted(set(ks))),
                             batch_size=batch_size or parts.config.eval_user_chunk,
                             include_history=include_history, item_counts=parts.splits.popularity)
    seconds = time.perf_counter() - start
    path = run_dir / METRICS_FILE
    recorded = (read_json_object(path, {}, fix=f"delete {path.name} and evaluate again (it is rewritten)")
                if path.is_file() else {})
    recorded[metrics_key(split, include_history, unblended)] = metrics
    write_json_atomic(path, recorded)
    metrics = dict(metrics)
    slices, reach = metrics.pop("slices"), metrics.pop(f"exposure@{EXPOSURE_K}")
    return {"metrics": metrics, "slices": slices, "exposure": reach, "users": len(target.targets),
            "items": parts.dataset.num_items, "seconds": round(seconds, 3), "device": str(parts.model.device)}
