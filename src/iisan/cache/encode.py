"""``iisan encode``: run each frozen encoder over every item once, resumably.

Batches are a deterministic function of the dataset and the options (text sorted by
token length to avoid padding waste; images in item order), and a batch's rows are
flagged done only after they are written. A killed run loses at most the batch in
flight; rerunning recomputes exactly the unfinished batches, so the result is
bit-identical to an uninterrupted run. The manifest is rewritten (atomically) only after
the data and flags it counts have been flushed, so it never claims a row that is not on disk.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from iisan.cache.store import (
    CACHE_VERSION, MANIFEST_FILE, MODALITIES, done_path, present_path, read_manifest, states_path, write_manifest,
)
from iisan.config import EncodeConfig
from iisan.data.dataset import PreparedDataset
from iisan.data.problems import Problems
from iisan.encoders.frozen import FrozenEncoder
from iisan.errors import CacheMismatchError
from iisan.fileio import check_replaceable

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 2.0
TOKENIZE_CHUNK = 10_000
IDENTITY_KEYS = ("name", "weight_hash", "pooling", "num_layers", "hidden_size", "settings")


def encode(
    dataset_dir: str | Path, cache_dir: str | Path, config: EncodeConfig, force: bool = False
) -> dict[str, Any]:
    """Build or resume the cache for ``dataset_dir`` in ``cache_dir``.

    Returns:
        A summary per modality (encoder, rows encoded now, rows already done, seconds,
        items per second) plus the problems found.

    Raises:
        CacheMismatchError: ``cache_dir`` holds a cache for another dataset or encoder
            setting and ``force`` is off.
    """
    dataset = PreparedDataset.load(dataset_dir)
    root = Path(cache_dir)
    check_replaceable(root, MANIFEST_FILE, force)
    manifest = read_manifest(root) if root.exists() and not force else None
    if force and root.exists():
        shutil.rmtree(root)
    if manifest is not None and manifest["dataset_fingerprint"] != dataset.fingerprint:
        raise CacheMismatchError(
            f"cache at {root} was built for dataset fingerprint {manifest['dataset_fingerprint'][:8]}…, "
            f"this dataset is {dataset.fingerprint[:8]}…; rerun with --force to rebuild it"
        )
    root.mkdir(parents=True, exist_ok=True)
    manifest = manifest or {
        "version": CACHE_VERSION,
        "dataset_fingerprint": dataset.fingerprint,
        "dataset": str(dataset.root.resolve()),
        "num_items": dataset.num_items,
        "encoders": {},
        "problems": {},
    }
    problems = Problems()
    summary: dict[str, Any] = {"cache": str(root), "modalities": {}}
    for modality, name in _plan(dataset, config):
        summary["modalities"][modality] = _encode_modality(dataset, root, manifest, modality, name, config, problems)
    manifest["problems"] = problems.to_json()
    write_manifest(root, manifest)
    summary["problems"] = problems.to_json()
    return summary


def _plan(dataset: PreparedDataset, config: EncodeConfig) -> list[tuple[str, str]]:
    plan = []
    if config.text_encoder:
        plan.append(("text", config.text_encoder))
    if config.image_encoder:
        if dataset.items["image"].is_not_null().any():
            plan.append(("image", config.image_encoder))
        else:
            log.info("no item has an image: skipping the image encoder")
    return plan


def _encode_modality(
    dataset: PreparedDataset, root: Path, manifest: dict, modality: str, name: str,
    config: EncodeConfig, problems: Problems,
) -> dict[str, Any]:
    encoder = FrozenEncoder.load(name, modality)  # type: ignore[arg-type]
    identity = {
        "name": encoder.name, "weight_hash": encoder.weight_hash, "pooling": config.pooling,
        "num_layers": encoder.num_layers, "hidden_size": encoder.hidden_size,
        "settings": config.settings(modality),
    }
    entry = manifest["encoders"].get(modality)
    if entry is not None and {k: entry[k] for k in IDENTITY_KEYS} != identity:
        changed = [k for k in IDENTITY_KEYS if entry[k] != identity[k]]
        raise CacheMismatchError(
            f"cache at {root} holds {modality} states from {entry['name']} with other "
            f"{', '.join(changed)}; rerun with --force to rebuild it"
        )
    arrays = _open_arrays(root, modality, dataset.num_items, encoder, entry is None)
    if entry is None:
        entry = {**identity, "file": states_path(root, modality).name, "completed_rows": 1}
        manifest["encoders"][modality] = entry
        write_manifest(root, manifest)
    states, done, present = arrays

    if modality == "text":
        batches, prepare = _text_batches(dataset, encoder, config)
    else:
        batches, prepare = _image_batches(dataset, encoder, config, done, present, problems)
    todo = [batch for batch in batches if not done[batch].all()]
    already = int(done[1:].sum())  # row 0 is padding, not an item

    def checkpoint() -> None:
        # Data and flags reach the disk before the manifest counts them.
        for array in (states, present, done):
            array.flush()
        entry["completed_rows"] = int(done.sum())
        write_manifest(root, manifest)

    start = time.perf_counter()
    written = 0
    last = start
    with ThreadPoolExecutor(max_workers=config.workers) as pool, tqdm(
        total=sum(len(b) for b in todo), desc=f"encode {modality}", unit="item", mininterval=1, smoothing=0.1
    ) as progress:
        pending: deque[tuple[np.ndarray, Any]] = deque()
        for batch in todo[:2]:  # one batch ahead: inputs are prepared while the model runs
            pending.append((batch, prepare(batch, pool)))
        next_index = len(pending)
        while pending:
            batch, prepared = pending.popleft()
            if next_index < len(todo):
                pending.append((todo[next_index], prepare(todo[next_index], pool)))
                next_index += 1
            rows, inputs = _resolve(prepared)
            if len(rows):
                pooled = encoder.pooled_hidden_states(inputs, config.pooling)  # [b, L + 1, D]
                states[rows] = pooled.to(torch.float16).numpy()
                present[rows] = 1
            done[batch] = 1
            written += len(batch)
            progress.update(len(batch))
            if time.perf_counter() - last > CHECKPOINT_SECONDS:
                checkpoint()
                last = time.perf_counter()
    checkpoint()
    seconds = time.perf_counter() - start
    return {
        "encoder": encoder.name,
        "layers": encoder.num_layers + 1,
        "hidden_size": encoder.hidden_size,
        "rows_encoded": written,
        "rows_already_done": already,
        "seconds": round(seconds, 3),
        "items_per_second": round(written / seconds, 1) if seconds > 0 and written else None,
        "items_with_modality": int(present.sum()),
    }


def _open_arrays(root: Path, modality: str, num_items: int, encoder: FrozenEncoder, new: bool):
    paths = states_path(root, modality), done_path(root, modality), present_path(root, modality)
    if not new and all(p.exists() for p in paths):
        return tuple(np.load(p, mmap_mode="r+", allow_pickle=False) for p in paths)
    shape = (num_items + 1, encoder.num_layers + 1, encoder.hidden_size)
    states = np.lib.format.open_memmap(paths[0], mode="w+", dtype=np.float16, shape=shape)
    done = np.lib.format.open_memmap(paths[1], mode="w+", dtype=np.uint8, shape=(num_items + 1,))
    present = np.lib.format.open_memmap(paths[2], mode="w+", dtype=np.uint8, shape=(num_items + 1,))
    done[0] = 1  # row 0 is padding: zeros, absent, and never encoded
    return states, done, present


def _text_batches(dataset: PreparedDataset, encoder: FrozenEncoder, config: EncodeConfig):
    """Batches of item ids sorted by token length, and a function building their inputs."""
    texts = dataset.items["text"].fill_null("").to_list()  # index i is item id i + 1
    width = config.max_text_tokens
    tokens = np.zeros((len(texts), width), dtype=np.int32)  # compact: no per-token Python objects
    lengths = np.zeros(len(texts), dtype=np.int32)
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        for row, ids in enumerate(encoder.tokenize(texts[start : start + TOKENIZE_CHUNK], width), start=start):
            tokens[row, : len(ids)] = ids
            lengths[row] = len(ids)
    order = np.argsort(lengths, kind="stable") + 1
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    pad = encoder.tokenizer.pad_token_id or 0

    def prepare(batch: np.ndarray, pool: ThreadPoolExecutor) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        rows = batch - 1
        longest = int(lengths[rows].max())
        ids = tokens[rows, :longest].astype(np.int64)
        mask = (np.arange(longest)[None, :] < lengths[rows][:, None]).astype(np.int64)
        ids[mask == 0] = pad
        return batch, {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}

    return batches, prepare


def _image_batches(
    dataset: PreparedDataset, encoder: FrozenEncoder, config: EncodeConfig,
    done: np.ndarray, present: np.ndarray, problems: Problems,
):
    """Batches of item ids with an image (in id order); items without one are done at once."""
    paths = dataset.items["image"].to_list()
    has_image = np.array([p is not None for p in paths], dtype=bool)
    without = np.flatnonzero(~has_image) + 1
    done[without] = 1  # a zero row and present = 0: the model sees the image is missing
    present[without] = 0
    ids = np.flatnonzero(has_image) + 1
    batches = [ids[i : i + config.batch_size] for i in range(0, len(ids), config.batch_size)]

    def load(item_id: int) -> np.ndarray | None:
        path = dataset.root / paths[item_id - 1]
        try:
            return encoder.preprocess_image(path.read_bytes(), config.image_size)
        except (OSError, ValueError, SyntaxError) as err:
            problems.add("unreadable_image", path.name, None, f"item id {item_id}: {err}")
            return None

    def prepare(batch: np.ndarray, pool: ThreadPoolExecutor) -> tuple[np.ndarray, list[Future]]:
        return batch, [pool.submit(load, int(i)) for i in batch]

    return batches, prepare


def _resolve(prepared: tuple[np.ndarray, Any]) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """Wait for a batch's inputs; drop images that failed to decode (their rows stay zero)."""
    batch, inputs = prepared
    if isinstance(inputs, dict):
        return batch, inputs
    pixels = [future.result() for future in inputs]
    keep = np.array([p is not None for p in pixels], dtype=bool)
    if not keep.any():
        return batch[:0], {}
    return batch[keep], {"pixel_values": torch.from_numpy(np.stack([p for p in pixels if p is not None]))}
