"""Measuring a trained run (``iisan evaluate``), recorded in its ``metrics.json``: one split
(:func:`evaluate_run`), or the item cold-start protocol (:func:`evaluate_cold_start`).

The item cold-start protocol (``--cold-start``, see :mod:`iisan.data.cold_start`): the items
the dataset held out of training are added to a copy of the run exactly as ``iisan items
add`` adds them (their content through the frozen encoders and the trained item tower), then
each cold-start user's held-out next item is ranked against the whole catalogue, old and
new, with the user's history excluded. The run itself is not changed, apart from the result
recorded in its ``metrics.json`` under ``cold_start``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from iisan.config import EVAL_KS, SPLITS
from iisan.data.cold_start import COLD_ITEMS_FILE, COLD_START_FILE
from iisan.data.dataset import PreparedDataset
from iisan.data.split import EvalSplit, last_items
from iisan.errors import ConfigError, RunReplacedError
from iisan.evaluation.exposure import EXPOSURE_K, shares
from iisan.evaluation.metrics import metrics_from_ranks
from iisan.evaluation.ranking import DEFAULT_KS, evaluate_split, item_embeddings, rank_split
from iisan.fileio import read_json_object, write_json_atomic
from iisan.run.files import RESUME_DIR, read_run_config, run_identity
from iisan.run.lock import run_lock
from iisan.serving.recommender import Recommender

METRICS_FILE = "metrics.json"
COLD_START_KEY = "cold_start"


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
    blended run with its trained model alone (:mod:`iisan.scoring.blend`), to see what the
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
    loaded = run_identity(run_dir)
    parts = assemble_run(run_dir, device=pick_device(device))
    if unblended and parts.scorer is parts.model:
        raise ConfigError(f"--unblended: {run_dir} has no calibrated blend (trained with --no-blend, "
                          "or a method without one); its plain scores are its metrics")
    ranker = parts.model if unblended else parts.scorer  # the model's own scores, or composed with its scorer
    start = time.perf_counter()
    items = item_embeddings(ranker, parts.source, parts.dataset.num_items)
    target = getattr(parts.splits, split)
    metrics = evaluate_split(ranker, items, target, ks=tuple(sorted(set(ks))),
                             batch_size=batch_size or parts.config.eval_user_chunk,
                             include_history=include_history, item_counts=parts.splits.popularity)
    seconds = time.perf_counter() - start
    record_metrics(run_dir, metrics_key(split, include_history, unblended), metrics, loaded)
    metrics = dict(metrics)
    slices, reach = metrics.pop("slices"), metrics.pop(f"exposure@{EXPOSURE_K}")
    return {"metrics": metrics, "slices": slices, "exposure": reach, "users": len(target.targets),
            "items": parts.dataset.num_items, "seconds": round(seconds, 3), "device": str(ranker.device)}


def evaluate_cold_start(run_dir: str | Path, ks: tuple[int, ...] = EVAL_KS, device: str = "auto",
                        batch_size: int = 1024) -> dict[str, Any]:
    """Add the held-out items to a copy of the run and rank them for their users.

    Returns:
        ``{"metrics": {...}, "users": U, "new_items": M, "items": N + M, "seconds": t}``;
        also merged into ``RUN/metrics.json`` under ``cold_start``.

    Raises:
        ConfigError: the run's dataset was prepared without ``--cold-items``.
    """
    run_dir = Path(run_dir)
    loaded = run_identity(run_dir)
    dataset = PreparedDataset.load(read_run_config(run_dir)["dataset"])
    if not (dataset.root / COLD_START_FILE).is_file():
        raise ConfigError(f"--cold-start: {dataset.root} holds no held-out items; prepare it with "
                          "`iisan prepare ... --cold-items 0.1` and train on it")
    new_items = pl.read_parquet(dataset.root / COLD_ITEMS_FILE)
    users = pl.read_parquet(dataset.root / COLD_START_FILE)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="iisan-cold-start-") as scratch:
        copy = Path(scratch) / "run"
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(RESUME_DIR, "tensorboard"))
        recommender = Recommender.load(copy, device=device)
        rows = [{"key": key, "text": text, "image": dataset.root / image if image else None}
                for key, text, image in new_items.iter_rows()]
        recommender.add_items(rows)  # embedded a batch at a time, committed once
        split = _split(users, recommender.ids, recommender.max_seq_len)
        catalogue = recommender.embeddings.to(recommender.device)
        ranks, top = rank_split(recommender.ranker, catalogue, split, batch_size, top_k=EXPOSURE_K)
        added = np.zeros(recommender.num_items + 1, dtype=bool)
        added[[recommender.ids[row["key"]] for row in rows]] = True
    metrics = metrics_from_ranks(ranks, tuple(sorted(set(ks))))
    reach = _new_item_places(top, added)
    record_metrics(run_dir, COLD_START_KEY, {**metrics, "users": len(split.targets), "new_items": len(rows),
                                             f"exposure@{EXPOSURE_K}": reach}, loaded)
    return {"metrics": metrics, "exposure": reach, "users": len(split.targets), "new_items": len(rows),
            "items": recommender.num_items, "seconds": round(time.perf_counter() - start, 3)}


def record_metrics(run_dir: Path, key: str, entry: dict[str, Any], loaded: tuple) -> None:
    """Merge ``entry`` into ``metrics.json`` under ``key``, holding the run's lock (two
    evaluations never drop each other's entry), if the run is still the one measured
    (``loaded``: its :func:`run_identity` before it was read).

    Raises:
        RunReplacedError: the run was trained or calibrated while it was measured; the file is
            left as it was.
        RunBusyError: a writer (training) held the run for longer than the lock's wait.
    """
    path = run_dir / METRICS_FILE
    with run_lock(run_dir, "recording metrics"):
        if run_identity(run_dir) != loaded:
            raise RunReplacedError(f"{run_dir} was trained or calibrated while it was evaluated; {path.name} is "
                                   "left as it was: evaluate again once that is done")
        recorded = (read_json_object(path, {}, fix=f"delete {path.name} and evaluate again (it is rewritten)")
                    if path.is_file() else {})
        recorded[key] = entry
        write_json_atomic(path, recorded)


def _new_item_places(top: torch.Tensor, added: np.ndarray) -> dict[str, Any]:
    """How the cold-start users' top-k lists treat the added items: the share of the places
    they take, beside their share of the catalogue, and the share of users shown one or more."""
    added = torch.from_numpy(added)
    share = shares(top, added)
    shown = (added[top] & (top > 0)).any(dim=1)
    return {"k": top.shape[1], "places": share["places"], "catalogue": share["catalogue"],
            "users_shown_one": round(float(shown.double().mean()), 4)}


def _split(users: pl.DataFrame, ids: dict[str, int], max_seq_len: int) -> EvalSplit:
    """The cold-start users as an evaluation split: inputs from their histories (item ids of
    the trained catalogue), targets the added items' ids, the whole history excluded."""
    lengths = users["history"].list.len().to_numpy().astype(np.int64)
    end = np.cumsum(lengths)
    start = end - lengths
    flat = users["history"].explode().to_numpy().astype(np.int64)
    targets = np.array([ids[key] for key in users["target"].to_list()], dtype=np.int64)
    return EvalSplit(last_items(flat, start, end, max_seq_len), targets, flat, start, end)
