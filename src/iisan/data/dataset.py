"""The prepared dataset directory: file names, format version, and a reader.

Layout (see DESIGN.md "Data")::

    items.parquet       item_id (1..N; 0 is padding), key, text, image (relative path or null)
    sequences.parquet   user_key, items (list of item_id, chronological)
    dataset.json        counts, filters, problems, fingerprint, format version
    images/             the kept items' images, named by item_id
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from iisan.errors import DatasetError
from iisan.fileio import read_json_object, require_fields

DATASET_VERSION = 1
REPREPARE = "rerun `iisan prepare`"
META_FIELDS = {"version": int, "fingerprint": str, "counts": dict}
ITEMS_FILE = "items.parquet"
SEQUENCES_FILE = "sequences.parquet"
META_FILE = "dataset.json"


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset directory, loaded.

    Attributes:
        root: the directory.
        meta: the content of ``dataset.json``.
        items: ``items.parquet`` sorted by ``item_id``.
        sequences: ``sequences.parquet`` in user order.
    """

    root: Path
    meta: dict[str, Any]
    items: pl.DataFrame
    sequences: pl.DataFrame

    @classmethod
    def load(cls, root: str | Path) -> PreparedDataset:
        """Read a dataset directory written by ``iisan prepare``.

        Raises:
            DatasetError: the directory is missing, incomplete or from another version.
        """
        root = Path(root)
        meta_path = root / META_FILE
        if not meta_path.is_file():
            raise DatasetError(
                f"{root} is not a prepared dataset (no {META_FILE}); create one with `iisan prepare`"
            )
        meta = read_json_object(meta_path, {"version": int}, REPREPARE)
        version = meta["version"]
        if version != DATASET_VERSION:
            raise DatasetError(
                f"{root} has dataset format version {version}, this iisan reads version "
                f"{DATASET_VERSION}; rerun `iisan prepare`"
            )
        require_fields(meta, META_FIELDS, str(meta_path), REPREPARE)
        for name, digest in meta.get("files", {}).items():  # datasets prepared before 0.2 have none
            path = root / name
            if not path.is_file():
                raise DatasetError(f"{path} is missing; {REPREPARE}")
            if file_sha256(path) != digest:
                raise DatasetError(f"{path} was changed after `iisan prepare` wrote it (its content hash "
                                   f"differs from {META_FILE}); {REPREPARE}")
        try:
            items = pl.read_parquet(root / ITEMS_FILE).sort("item_id")
            sequences = pl.read_parquet(root / SEQUENCES_FILE)
        except (OSError, pl.exceptions.PolarsError) as err:
            raise DatasetError(f"{root} is incomplete or damaged: {err}; {REPREPARE}") from err
        for name, table, columns in ((ITEMS_FILE, items, ("item_id", "key", "text", "image")),
                                     (SEQUENCES_FILE, sequences, ("user_key", "items"))):
            missing = [c for c in columns if c not in table.columns]
            if missing:
                raise DatasetError(f"{root / name} lacks the column{'s' if len(missing) > 1 else ''} "
                                   f"{', '.join(missing)}; {REPREPARE}")
        if items["item_id"].to_list() != list(range(1, items.height + 1)):
            raise DatasetError(f"{root / ITEMS_FILE}: item ids are not 1..{items.height}; {REPREPARE}")
        flat = sequences["items"].explode().drop_nulls()
        if len(flat) and (flat.min() < 1 or flat.max() > items.height):
            raise DatasetError(f"{root / SEQUENCES_FILE} names item ids outside 1..{items.height}; {REPREPARE}")
        return cls(root=root, meta=meta, items=items, sequences=sequences)

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    @property
    def num_items(self) -> int:
        """N, the number of real items; ids run 1..N and 0 is padding."""
        return self.items.height

    def sequence_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The sequences as CSR arrays: ``(flat item ids int32, offsets int64 [users + 1])``."""
        lengths = self.sequences["items"].list.len().to_numpy().astype(np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = self.sequences["items"].explode().to_numpy().astype(np.int32)
        return flat, offsets


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
