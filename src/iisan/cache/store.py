"""On-disk layout of the hidden-state cache, and reading it without loading it into RAM.

::

    CACHE_DIR/manifest.json          dataset fingerprint, format version, one entry per modality
    CACHE_DIR/<modality>.npy         float16 [N + 1, L + 1, D]; row 0 is padding (zeros)
    CACHE_DIR/<modality>.done.npy    uint8 [N + 1]: 1 once the row is written (resume truth)
    CACHE_DIR/<modality>.present.npy uint8 [N + 1]: 0 where the item lacks that modality

``.npy`` files are memory-mapped (``allow_pickle=False``), so a 1M-item cache is read by
gathering rows, never loaded whole.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iisan.encoders.identity import same_weights
from iisan.errors import CacheMismatchError, DatasetError
from iisan.fileio import read_json_object, require_fields, write_json_atomic

CACHE_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODALITIES = ("text", "image")


def states_path(root: Path, modality: str) -> Path:
    return root / f"{modality}.npy"


def done_path(root: Path, modality: str) -> Path:
    return root / f"{modality}.done.npy"


def present_path(root: Path, modality: str) -> Path:
    return root / f"{modality}.present.npy"


def release_resident_pages(array: np.ndarray) -> None:
    """Drop this process's resident copies of a memory-mapped array's pages.

    Pages of a file mapping count in the process's resident memory once touched, so one
    pass over a 5 GB cache would make a 5 GB process. Releasing them loses nothing (a
    read-only mapping has nothing to write; a writable one must be flushed first) and the
    next access is served from the OS page cache or the disk.
    """
    mapping = getattr(array, "_mmap", None)  # np.memmap's mapping; absent for in-memory arrays
    if isinstance(mapping, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


REBUILD = "rebuild it with `iisan encode --force`"
# What decides a modality's cached states, given the dataset: two entries that agree on these
# hold the same numbers (the encoders are deterministic), so a run can check its cache is the one
# it was trained on without hashing gigabytes.
IDENTITY_KEYS = ("name", "weight_hash", "pooling", "num_layers", "hidden_size", "settings", "precision",
                 "stored_layers")
# What an entry written before a key existed meant: float32 encoders, every layer stored.
IDENTITY_DEFAULTS = {"precision": "fp32", "stored_layers": None}
MANIFEST_FIELDS = {"version": int, "dataset_fingerprint": str, "num_items": int, "encoders": dict}
ENTRY_FIELDS = {"name": str, "weight_hash": str, "pooling": str, "num_layers": int, "hidden_size": int,
                "settings": dict, "completed_rows": int}


@dataclass(frozen=True)
class EncoderEntry:
    """One encoder's entry in a cache manifest, also kept in a run's ``config.json``: which
    encoder made the states and how. ``manifest.json`` holds it as JSON; readers get this.

    Attributes:
        name: registry name or folder of the encoder.
        weight_hash: a hash of its weights (a changed folder is noticed).
        pooling: how each layer's tokens became one vector (``cls``, ``mean``, ``last``).
        num_layers: L, its blocks (the states hold L + 1 layers, the embedding output first).
        hidden_size: D, the width of a state.
        settings: the options that change its values (``max_text_tokens`` or ``image_size``).
        precision: ``fp32`` or ``bf16``, the compute precision of the encoder.
        stored_layers: the layers the cache holds, or ``None`` for all L + 1.
        completed_rows: rows written so far (N + 1 when the cache is finished).
    """

    name: str
    weight_hash: str
    pooling: str
    num_layers: int
    hidden_size: int
    settings: dict[str, Any]
    precision: str = IDENTITY_DEFAULTS["precision"]
    stored_layers: tuple[int, ...] | None = None
    completed_rows: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str, fix: str = REBUILD,
                  error: type[Exception] = CacheMismatchError) -> EncoderEntry:
        """An entry as ``manifest.json`` or ``config.json`` holds it (extra keys ignored).

        Raises:
            ``error``: a missing or mistyped field, naming ``where`` and ``fix``.
        """
        require_fields(data, ENTRY_FIELDS, where, fix, error)
        known = {name: data[name] for name in cls.__dataclass_fields__ if data.get(name) is not None}
        stored = known.pop("stored_layers", None)
        return cls(**known, stored_layers=tuple(int(i) for i in stored) if stored else None)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["stored_layers"] = list(self.stored_layers) if self.stored_layers is not None else None
        return out

    @property
    def shape(self) -> tuple[int, int]:
        """``(L + 1, D)`` of one item's states."""
        return self.num_layers + 1, self.hidden_size

    def changes(self, other: EncoderEntry, modality: str) -> list[str]:
        """The identity fields on which ``other`` differs, each as ``field mine -> other's``.

        Weight identities are compared as weights, not strings: one recorded by an earlier
        iisan (which hashed transformers' version stamp too) matches today's when the
        encoder's folder here holds those weights (see :mod:`iisan.encoders.identity`)."""
        differ = [key for key in IDENTITY_KEYS if getattr(self, key) != getattr(other, key)]
        if "weight_hash" in differ and self.name == other.name \
                and same_weights(self.weight_hash, other.weight_hash, self.name, modality):
            differ.remove("weight_hash")
        return [f"{key} {_short(getattr(self, key))} -> {_short(getattr(other, key))}" for key in differ]


def identity_changes(recorded: dict[str, Any] | EncoderEntry, found: dict[str, Any] | EncoderEntry,
                     modality: str) -> list[str]:
    """The identity keys on which two manifest entries differ, each as ``key recorded -> found``."""
    def entry(value):
        if isinstance(value, EncoderEntry):
            return value
        return EncoderEntry.from_json({"completed_rows": 0, **value}, "a manifest entry")

    return entry(recorded).changes(entry(found), modality)


def _short(value: Any) -> str:
    value = list(value) if isinstance(value, tuple) else value
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 40 else text[:12] + "…"


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The cache's manifest, checked for every field the cache is read by; ``None`` if absent.

    Raises:
        CacheMismatchError: another format version, or a damaged manifest.
    """
    path = root / MANIFEST_FILE
    if not path.is_file():
        return None
    manifest = read_json_object(path, {"version": int}, REBUILD, CacheMismatchError)
    if manifest["version"] != CACHE_VERSION:
        raise CacheMismatchError(
            f"cache {root} has format version {manifest.get('version')}, this iisan reads "
            f"{CACHE_VERSION}; {REBUILD}"
        )
    require_fields(manifest, MANIFEST_FIELDS, str(path), REBUILD, CacheMismatchError)
    for modality, entry in manifest["encoders"].items():
        if modality not in MODALITIES or not isinstance(entry, dict):
            raise CacheMismatchError(f"{path}: unknown encoder entry {modality!r}; {REBUILD}")
        require_fields(entry, ENTRY_FIELDS, f"{path} ({modality} entry)", REBUILD, CacheMismatchError)
    return manifest


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(root / MANIFEST_FILE, manifest)


@dataclass(frozen=True)
class HiddenStateCache:
    """A complete cache, memory-mapped read-only.

    Attributes:
        root: the cache folder.
        manifest: the content of ``manifest.json``.
    """

    root: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, root: str | Path, dataset_fingerprint: str | None = None) -> HiddenStateCache:
        """Open a finished cache, checking it was built for ``dataset_fingerprint``.

        Raises:
            DatasetError: there is no cache at ``root``.
            CacheMismatchError: it is unfinished, of another version, or for another dataset.
        """
        root = Path(root)
        manifest = read_manifest(root)
        if manifest is None:
            raise DatasetError(f"{root} is not a hidden-state cache (no {MANIFEST_FILE}); build one with `iisan encode`")
        if dataset_fingerprint is not None and manifest["dataset_fingerprint"] != dataset_fingerprint:
            raise CacheMismatchError(
                f"cache at {root} was built for dataset fingerprint {manifest['dataset_fingerprint'][:8]}…, "
                f"this dataset is {dataset_fingerprint[:8]}…; rerun `iisan encode --force`"
            )
        unfinished = [m for m, e in manifest["encoders"].items() if e["completed_rows"] < manifest["num_items"] + 1]
        if unfinished:
            raise CacheMismatchError(
                f"cache at {root} is unfinished ({', '.join(unfinished)}); rerun the same `iisan encode` to resume"
            )
        cache = cls(root, manifest)
        for modality in cache.modalities:
            cache.check_arrays(modality)
        return cache

    def check_arrays(self, modality: str) -> None:
        """The modality's arrays exist, are whole, and have the shapes the manifest describes.

        Reads only the ``.npy`` headers (a memory map of a truncated file fails at once).

        Raises:
            CacheMismatchError: naming the file and what differs.
        """
        rows = self.num_items + 1
        stored = len(self.stored_layers(modality))
        expected = {states_path(self.root, modality): ((rows, stored, self.hidden_size(modality)), np.float16),
                    present_path(self.root, modality): ((rows,), np.uint8)}
        for path, (shape, dtype) in expected.items():
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise CacheMismatchError(f"{path} is missing; {REBUILD}") from None
            except (OSError, ValueError, EOFError) as err:
                raise CacheMismatchError(f"{path} is damaged or truncated ({err}); {REBUILD}") from None
            if array.shape != shape or array.dtype != dtype:
                raise CacheMismatchError(
                    f"{path} holds {array.dtype} {list(array.shape)}, the manifest describes {np.dtype(dtype)} "
                    f"{list(shape)} ({self.num_items} items + padding, layers, hidden size); {REBUILD}")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.manifest["encoders"])

    @property
    def num_items(self) -> int:
        return int(self.manifest["num_items"])

    def entry(self, modality: str) -> EncoderEntry:
        """The manifest's entry for ``modality``'s encoder.

        Raises:
            CacheMismatchError: the cache holds no states of ``modality``.
        """
        try:
            data = self.manifest["encoders"][modality]
        except KeyError:
            raise CacheMismatchError(
                f"cache at {self.root} has no {modality} states (it has: {', '.join(self.modalities)})"
            ) from None
        return EncoderEntry.from_json(data, f"{self.root / MANIFEST_FILE} ({modality} entry)")

    def num_layers(self, modality: str) -> int:
        """L + 1: the embedding output plus every block."""
        return self.entry(modality).num_layers + 1

    def hidden_size(self, modality: str) -> int:
        return self.entry(modality).hidden_size

    def stored_layers(self, modality: str) -> tuple[int, ...]:
        """The encoder layers the states array holds, in its order (all ``L + 1`` unless the
        cache was built with ``--text-layers`` / ``--image-layers``)."""
        return self.entry(modality).stored_layers or tuple(range(self.num_layers(modality)))

    def positions(self, modality: str, layers) -> list[int]:
        """Where encoder ``layers`` sit in the states array.

        Raises:
            CacheMismatchError: a layer the cache did not store.
        """
        stored = self.stored_layers(modality)
        missing = [i for i in layers if i not in stored]
        if missing:
            raise CacheMismatchError(f"cache at {self.root} stored {modality} layers {', '.join(map(str, stored))}, "
                                     f"not {', '.join(map(str, missing))}; choose among them or encode again")
        return [stored.index(i) for i in layers]

    def states(self, modality: str) -> np.memmap:
        """The whole ``[N + 1, S, D]`` float16 array (``S``: the stored layers, normally all
        ``L + 1``), memory-mapped read-only."""
        self.entry(modality)
        return np.load(states_path(self.root, modality), mmap_mode="r", allow_pickle=False)

    def present(self, modality: str) -> np.ndarray:
        """``[N + 1]`` bool: whether each item has this modality (row 0, padding, is False)."""
        self.entry(modality)
        return np.load(present_path(self.root, modality), allow_pickle=False).astype(bool)

    def constant_layers(self, modality: str, sample: int = 512) -> tuple[int, ...]:
        """Layers whose state is the same for every item (up to float16 rounding), judged on
        up to ``sample`` evenly spaced items that have the modality.

        Under CLS pooling layer 0 is one: the embedding of the CLS token at position 0,
        whatever the text. Such a state tells the side network nothing about the item.
        """
        present = np.flatnonzero(self.present(modality))
        if len(present) < 2:
            return ()
        rows = np.asarray(self.states(modality)[present[np.linspace(0, len(present) - 1, min(sample, len(present))).astype(int)]],
                          dtype=np.float32)  # [n, L + 1, D]
        spread = (rows.max(axis=0) - rows.min(axis=0)).max(axis=-1)  # [L + 1]
        scale = np.abs(rows).max(axis=(0, 2))
        stored = self.stored_layers(modality)
        return tuple(stored[int(i)] for i in np.flatnonzero(spread <= 1e-3 * scale + 1e-6))

    def gather(self, modality: str, item_ids: np.ndarray) -> np.ndarray:
        """Rows for ``item_ids`` (any shape) as ``[*ids.shape, L + 1, D]`` float16.

        Only the requested rows are read from disk (sorted, unique, for sequential access).
        """
        states = self.states(modality)
        ids = np.asarray(item_ids)
        unique, inverse = np.unique(ids.ravel(), return_inverse=True)
        rows = states[unique]
        return rows[inverse].reshape(*ids.shape, *states.shape[1:])
