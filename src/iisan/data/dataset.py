"""The prepared dataset directory: file names, format version, and a reader.

Layout (see DESIGN.md "Data")::

    items.parquet       item_id (1..N; 0 is padding), key, text, image (relative path or null)
    sequences.parquet   user_key, items (list of item_id, chronological)
    dataset.json        counts, filters, problems, fingerprint, format version
    images/             the kept items' images, named by item_id
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from iisan.errors import DatasetError

DATASET_VERSION = 1
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
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DatasetError(f"cannot read {meta_path}: {err}") from err
        version = meta.get("version")
        if version != DATASET_VERSION:
            raise DatasetError(
                f"{root} has dataset format version {version}, this iisan reads version "
                f"{DATASET_VERSION}; rerun `iisan prepare`"
            )
        try:
            items = pl.read_parquet(root / ITEMS_FILE).sort("item_id")
            sequences = pl.read_parquet(root / SEQUENCES_FILE)
        except (OSError, pl.exceptions.PolarsError) as err:
            raise DatasetError(f"{root} is incomplete or damaged: {err}; rerun `iisan prepare`") from err
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
