"""``iisan encode``: run each frozen encoder over every item once, resumably.

Batches are a deterministic function of the dataset and the options (text sorted by
token length to avoid padding waste; images in item order), and a batch's rows are
flagged done only after they are written. A killed run loses at most the batch in
flight; rerunning recomputes exactly the unfinished batches, so the result is
bit-identical to an uninterrupted run. The manifest is rewritten (atomically) only after
the data and flags it counts have been flushed, so it never claims a row that is not on disk.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iisan.cache.store import (
    CACHE_VERSION, IDENTITY_KEYS, MANIFEST_FILE, done_path, identity_changes, present_path, read_manifest,
    release_resident_pages, states_path, write_manifest,
)
from iisan.config import EncodeConfig
from iisan.data.dataset import PreparedDataset
from iisan.data.problems import Problems
from iisan.devices import compute_dtype, pick_device, precision_name
from iisan.encoders.layer_states import FrozenEncoder
from iisan.errors import CacheMismatchError, ConfigError, NonFiniteError, StorageError
from iisan.fileio import check_replaceable, crash_point, refuse_output_over_inputs, storage_errors
from iisan.progress import progress

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 2.0
TOKENIZE_CHUNK = 10_000


def encode(
    dataset_dir: str | Path, cache_dir: str | Path, config: EncodeConfig, force: bool = False,
    shard: tuple[int, int] | None = None, device: str = "auto",
) -> dict[str, Any]:
    """Build or resume the cache for ``dataset_dir`` in ``cache_dir``.

    With ``shard=(k, n)`` only the k-th of n contiguous item ranges is encoded, into its
    own folder ``cache_dir/shard-k-of-n`` (a complete cache layout whose other rows stay
    unwritten, so sparse on disk): shards share no file, so n processes or machines can
    run against one cache folder on a shared filesystem. :func:`merge_shards` then checks
    that every row is done and assembles the cache. ``device``: see :func:`iisan.devices.pick_device`.

    Returns:
        A summary per modality (encoder, rows encoded now, rows already done, seconds,
        items per second) plus the problems found.

    Raises:
        CacheMismatchError: ``cache_dir`` holds a cache for another dataset or encoder
            setting and ``force`` is off.
    """
    target = pick_device(device)  # before anything is read or deleted
    refuse_output_over_inputs(cache_dir, {"dataset": dataset_dir})
    dataset = PreparedDataset.load(dataset_dir)
    root = Path(cache_dir)
    item_range = (1, dataset.num_items + 1)
    if shard is not None:
        item_range = shard_range(shard, dataset.num_items)
        if root.exists() and not root.is_dir():
            raise ConfigError(f"--out {root} is a file; give a directory path")
        root = root / shard_folder(shard)
    check_replaceable(root, MANIFEST_FILE, force)
    manifest = read_manifest(root) if root.exists() and not force else None
    if force and root.exists():
        shutil.rmtree(root)
    if manifest is not None and manifest["dataset_fingerprint"] != dataset.fingerprint:
        raise CacheMismatchError(
            f"cache at {root} was built for dataset fingerprint {manifest['dataset_fingerprint'][:8]}…, "
            f"this dataset is {dataset.fingerprint[:8]}…; rerun with --force (Python: force=True) to rebuild it"
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
    if shard is not None:
        manifest["shard"] = {"index": shard[0], "count": shard[1], "rows": list(item_range)}
    problems = Problems()
    summary: dict[str, Any] = {"cache": str(root), "modalities": {}}
    for modality, name in _plan(dataset, config):
        summary["modalities"][modality] = _encode_modality(dataset, root, manifest, modality, name, config, problems,
                                                           item_range, target)
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
    config: EncodeConfig, problems: Problems, item_range: tuple[int, int], device: torch.device,
) -> dict[str, Any]:
    compute = compute_dtype(config.precision, device)
    # At bf16 the weights are loaded in bf16 too: a large encoder then needs half the memory.
    encoder = FrozenEncoder.load(name, modality, device, dtype=compute)  # type: ignore[arg-type]
    pooling = encoder.resolve_pooling(config.pooling_for(modality))
    stored = stored_layers(getattr(config, f"{modality}_layers"), encoder.num_layers, modality)
    identity = {
        "name": encoder.name, "weight_hash": encoder.weight_hash, "pooling": pooling,
        "num_layers": encoder.num_layers, "hidden_size": encoder.hidden_size,
        "settings": config.settings(modality), "precision": precision_name(compute),
        "stored_layers": list(stored) if len(stored) < encoder.num_layers + 1 else None,
    }
    new = modality not in manifest["encoders"]
    entry = _manifest_entry(root, manifest, modality, identity)
    states, done, present = _open_arrays(root, modality, dataset.num_items, (len(stored), encoder.hidden_size), new)

    if modality == "text":
        batches, prepare = _text_batches(dataset, encoder, config, item_range)
    else:
        batches, prepare = _image_batches(dataset, encoder, config, done, present, problems, item_range)
    todo = [batch for batch in batches if not done[batch].all()]
    already = int(done[item_range[0]:item_range[1]].sum())

    def checkpoint() -> None:
        # Data and flags reach the disk before the manifest counts them.
        for array in (states, present, done):
            array.flush()
        release_resident_pages(states)  # flushed: the written pages need not stay in this process
        entry["completed_rows"] = int(done.sum())
        write_manifest(root, manifest)

    start = time.perf_counter()
    written = 0
    last = start
    with ThreadPoolExecutor(max_workers=config.workers) as pool, progress(
        total=sum(len(b) for b in todo), desc=f"encode {modality}", unit="item", mininterval=1, smoothing=0.1
    ) as bar:
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
                pooled = encoder.pooled_hidden_states(inputs, pooling, compute, stored).to(torch.float16).cpu()  # [b, S, D]
                _require_finite(pooled, rows, dataset, modality)
                states[rows] = pooled.numpy()
                present[rows] = 1
            done[batch] = 1
            written += len(batch)
            bar.update(len(batch))
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


def _manifest_entry(root: Path, manifest: dict, modality: str, identity: dict[str, Any]) -> dict[str, Any]:
    """``modality``'s manifest entry, written first for a new one (a folder with arrays but
    no manifest would not be ours to resume).

    Raises:
        CacheMismatchError: the cache holds states of another encoder setting.
    """
    entry = manifest["encoders"].get(modality)
    changed = identity_changes(entry, identity, modality) if entry is not None else []
    if changed:
        raise CacheMismatchError(
            f"cache at {root} holds {modality} states from {entry['name']} with other "
            f"{', '.join(changed)}; rerun with --force (Python: force=True) to rebuild it"
        )
    if entry is None:
        entry = {**identity, "file": states_path(root, modality).name, "completed_rows": 1}
        manifest["encoders"][modality] = entry
        write_manifest(root, manifest)
    return entry


def _require_finite(pooled: torch.Tensor, rows: np.ndarray, dataset: PreparedDataset, modality: str) -> None:
    """Refuse states that are NaN or beyond float16's range (+-65504): the cache must never
    hold a number that training or ranking would turn into a perfect-looking result."""
    bad = ~torch.isfinite(pooled).flatten(1).all(dim=1)
    if not bool(bad.any()):
        return
    ids = rows[bad.numpy()]
    keys = dataset.items["key"].gather(ids.astype(np.int64) - 1).to_list()
    shown = ", ".join(map(repr, keys[:5])) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    raise NonFiniteError(
        f"encode {modality}: the encoder gave non-finite hidden states (NaN, or beyond float16's "
        f"range) for {len(keys)} item{'s' if len(keys) > 1 else ''}: {shown}; check the encoder's weights; "
        "the rows encoded so far are kept, so the same command resumes once the cause is fixed"
    )


def stored_layers(requested: tuple[int, ...] | None, num_layers: int, modality: str) -> tuple[int, ...]:
    """The layers to store of an encoder with ``num_layers`` blocks: ``requested`` plus the last
    (which the frozen baseline and the encoder baselines read), or all ``L + 1``."""
    if requested is None:
        return tuple(range(num_layers + 1))
    if max(requested) > num_layers:
        raise ConfigError(f"--{modality}-layers: layer {max(requested)} does not exist, the {modality} encoder "
                          f"has layers 0..{num_layers}")
    return tuple(sorted(set(requested) | {num_layers}))


def new_array(path: Path, dtype, shape: tuple[int, ...]) -> np.memmap:
    """A zeroed ``.npy`` array memory-mapped for writing, its disk blocks allocated up front:
    a memory map over a sparse file dies with SIGBUS when the disk fills, where this raises
    a :class:`StorageError` before anything is encoded.

    Raises:
        StorageError: the disk cannot hold it (naming the size needed and the space free).
    """
    needed = int(np.prod(shape)) * np.dtype(dtype).itemsize
    with storage_errors(path, needed):
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        descriptor = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(descriptor, 0, path.stat().st_size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without it: as before
                raise
        finally:
            os.close(descriptor)
        crash_point()
    return array


def _open_arrays(root: Path, modality: str, num_items: int, shape_per_item: tuple[int, int], new: bool):
    paths = states_path(root, modality), done_path(root, modality), present_path(root, modality)
    if not new and all(p.exists() for p in paths):
        return tuple(np.load(p, mmap_mode="r+", allow_pickle=False) for p in paths)
    shape = (num_items + 1, *shape_per_item)
    try:
        states = new_array(paths[0], np.float16, shape)
        done = new_array(paths[1], np.uint8, (num_items + 1,))
        present = new_array(paths[2], np.uint8, (num_items + 1,))
    except StorageError:
        for path in paths:  # no manifest names them yet: a rerun starts from a clean folder
            path.unlink(missing_ok=True)
        raise
    done[0] = 1  # row 0 is padding: zeros, absent, and never encoded
    return states, done, present


def _text_batches(dataset: PreparedDataset, encoder: FrozenEncoder, config: EncodeConfig,
                  item_range: tuple[int, int]):
    """Batches of the range's item ids sorted by token length, and a function building their inputs."""
    first, end = item_range
    texts = dataset.items["text"].fill_null("").to_list()[first - 1 : end - 1]  # index i is item id first + i
    width = config.max_text_tokens
    tokens = np.zeros((len(texts), width), dtype=np.int32)  # compact: no per-token Python objects
    lengths = np.zeros(len(texts), dtype=np.int32)
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        for row, ids in enumerate(encoder.tokenize(texts[start : start + TOKENIZE_CHUNK], width), start=start):
            tokens[row, : len(ids)] = ids
            lengths[row] = len(ids)
    order = np.argsort(lengths, kind="stable") + first
    batches = [order[i : i + config.encode_batch_size] for i in range(0, len(order), config.encode_batch_size)]
    pad = encoder.tokenizer.pad_token_id or 0

    def prepare(batch: np.ndarray, pool: ThreadPoolExecutor) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        rows = batch - first
        longest = int(lengths[rows].max())
        ids = tokens[rows, :longest].astype(np.int64)
        mask = (np.arange(longest)[None, :] < lengths[rows][:, None]).astype(np.int64)
        ids[mask == 0] = pad
        return batch, {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}

    return batches, prepare


def _image_batches(
    dataset: PreparedDataset, encoder: FrozenEncoder, config: EncodeConfig,
    done: np.ndarray, present: np.ndarray, problems: Problems, item_range: tuple[int, int],
):
    """Batches of the range's item ids with an image (in id order); items without one are done at once."""
    paths = dataset.items["image"].to_list()
    in_range = np.zeros(len(paths), dtype=bool)
    in_range[item_range[0] - 1 : item_range[1] - 1] = True
    has_image = np.array([p is not None for p in paths], dtype=bool)
    without = np.flatnonzero(~has_image & in_range) + 1
    done[without] = 1  # a zero row and present = 0: the model sees the image is missing
    present[without] = 0
    ids = np.flatnonzero(has_image & in_range) + 1
    batches = [ids[i : i + config.encode_batch_size] for i in range(0, len(ids), config.encode_batch_size)]

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


# ---- shards ----------------------------------------------------------------------------

MERGE_CHUNK = 4096


def shard_range(shard: tuple[int, int], num_items: int) -> tuple[int, int]:
    """Item ids ``[first, end)`` of shard ``k`` of ``n`` (1-based): contiguous, near-equal."""
    index, count = shard
    if not 1 <= index <= count:
        raise ConfigError(f"--shard K/N needs 1 <= K <= N, got {index}/{count}")
    return 1 + num_items * (index - 1) // count, 1 + num_items * index // count


def shard_folder(shard: tuple[int, int]) -> str:
    return f"shard-{shard[0]}-of-{shard[1]}"


def parse_shard(text: str, environ: dict[str, str] | None = None) -> tuple[int, int]:
    """``--shard K/N`` as ``(K, N)``; ``auto`` takes them from torchrun's ``RANK`` and
    ``WORLD_SIZE`` (in ``environ``, default the process's).

    Raises:
        ConfigError: not K/N, or ``auto`` outside torchrun.
    """
    environ = os.environ if environ is None else environ
    if text == "auto":
        if "RANK" not in environ or "WORLD_SIZE" not in environ:
            raise ConfigError("--shard auto takes K/N from torchrun's RANK and WORLD_SIZE; outside torchrun give K/N")
        return int(environ["RANK"]) + 1, int(environ["WORLD_SIZE"])
    index, _, count = text.partition("/")
    if not (index.strip().isdigit() and count.strip().isdigit()):
        raise ConfigError(f"--shard takes K/N, e.g. 1/4, got {text!r}")
    return int(index), int(count)


def merge_shards(dataset_dir: str | Path, cache_dir: str | Path) -> dict[str, Any]:
    """Check that the shards in ``cache_dir`` cover every row, then assemble the cache.

    Rows are copied into ``cache_dir`` in bounded chunks, the manifest is written last,
    and the shard folders are removed. Run it once, after every shard has finished.

    Raises:
        CacheMismatchError: shards missing, unfinished, from another dataset or with
            different encoder settings (nothing is merged then).
    """
    dataset = PreparedDataset.load(dataset_dir)
    root = Path(cache_dir)
    folders = sorted(root.glob("shard-*-of-*")) if root.is_dir() else []
    if not folders:
        raise CacheMismatchError(f"{root} holds no shard folders (shard-K-of-N); run `iisan encode --shard K/N` first")
    manifests = {folder: read_manifest(folder) for folder in folders}
    counts = {m["shard"]["count"] for m in manifests.values() if m}
    if len(counts) != 1:
        raise CacheMismatchError(f"{root} mixes shards of different splits ({sorted(counts)} parts); remove the stale ones")
    count = counts.pop()
    found = {m["shard"]["index"]: (folder, m) for folder, m in manifests.items() if m}
    problems = []
    missing = [k for k in range(1, count + 1) if k not in found]
    if missing:
        problems.append(f"shard{'s' if len(missing) > 1 else ''} {', '.join(f'{k}/{count}' for k in missing)} not started")
    reference = None
    for index, (folder, manifest) in sorted(found.items()):
        if manifest["dataset_fingerprint"] != dataset.fingerprint:
            raise CacheMismatchError(f"{folder} was encoded from another dataset")
        identity = {m: {k: e[k] for k in IDENTITY_KEYS} for m, e in manifest["encoders"].items()}
        if reference is not None and identity != reference:
            raise CacheMismatchError(f"{folder} used other encoder settings than shard 1/{count}")
        reference = identity
        first, end = shard_range((index, count), dataset.num_items)
        for modality in identity:
            done = np.load(done_path(folder, modality), mmap_mode="r", allow_pickle=False)
            left = int((done[first:end] == 0).sum())
            if left:
                problems.append(f"shard {index}/{count} has {left:,} {modality} rows to go")
    if problems:
        raise CacheMismatchError("cannot merge: " + "; ".join(problems) + " (rerun those shards, then --merge-check)")

    first_manifest = found[1][1]
    manifest = {key: value for key, value in first_manifest.items() if key != "shard"}
    manifest["encoders"], manifest["problems"] = {}, {}
    for modality, entry in first_manifest["encoders"].items():
        shape = np.load(states_path(found[1][0], modality), mmap_mode="r", allow_pickle=False).shape
        states = new_array(states_path(root, modality), np.float16, shape)
        done = new_array(done_path(root, modality), np.uint8, shape[:1])
        present = new_array(present_path(root, modality), np.uint8, shape[:1])
        done[0] = 1
        for index, (folder, _) in found.items():
            first, end = shard_range((index, count), dataset.num_items)
            source = [np.load(path(folder, modality), mmap_mode="r", allow_pickle=False)
                      for path in (states_path, done_path, present_path)]
            for start in range(first, end, MERGE_CHUNK):
                stop = min(start + MERGE_CHUNK, end)
                states[start:stop] = source[0][start:stop]
                done[start:stop] = source[1][start:stop]
                present[start:stop] = source[2][start:stop]
                states.flush()  # a merge streams the whole cache: keep this process's share of it small
                release_resident_pages(states)
                release_resident_pages(source[0])
        for array in (states, done, present):
            array.flush()
        manifest["encoders"][modality] = {**entry, "completed_rows": int(done.sum())}
    for _, shard_manifest in found.values():
        for kind, record in shard_manifest.get("problems", {}).items():
            merged = manifest["problems"].setdefault(
                kind, {"count": 0, "description": record.get("description"), "examples": []})
            merged["count"] += record.get("count", 0)
            merged["examples"] = (merged["examples"] + record.get("examples", []))[:10]
    write_manifest(root, manifest)
    for folder, _ in found.values():
        shutil.rmtree(folder)
    return {"cache": str(root), "shards": count, "items": dataset.num_items,
            "modalities": {m: e["completed_rows"] - 1 for m, e in manifest["encoders"].items()}}
