"""A process's view of a run's committed catalogue: loaded from ``RUN/index``, kept current
with what other processes commit, and changed (built, grown) by one writer at a time.

Readers take no lock: a commit can clean away the generation being read, and the reader
then reads the newer one the pointer names. Writers hold the run's lock
(:mod:`iisan.run.lock`) and start from the generation committed on disk, whoever
committed it, so nothing committed is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from iisan.errors import DatasetError, RunReplacedError
from iisan.run.files import WEIGHTS_FILE, ranking_digest, run_identity
from iisan.run.index_store import (
    INDEX_DIR, StoredIndex, committed_generation, empty_added_table, load_index, save_index,
)
from iisan.run.lock import run_lock
from iisan.item_rows import ItemRows
from iisan.search import HnswSettings, ItemIndex, column_scale
from iisan.two_stage import FirstStage, TwoStageIndex

log = logging.getLogger(__name__)

# How stale a query's catalogue may be against another process's commit: one small file
# read per period, not per request.
REFRESH_SECONDS = 2.0
READ_TRIES = 5


@dataclass(frozen=True)
class Catalogue:
    """Everything a query reads, replaced as one object: a query sees the catalogue before an
    addition or after it, never half of it, and a failed save leaves the old one in place."""

    stored: StoredIndex
    keys: list[str]  # by item id; id 0 is padding
    titles: list[str | None]
    ids: dict[str, int]
    table: ItemRows  # the full vectors, read onto the model's device: what the user encoder reads

    @property
    def num_items(self) -> int:
        return len(self.keys) - 1


class CatalogueStore:
    """The run's catalogue as this process sees it (:attr:`current`).

    Args:
        run_dir: the run folder.
        trained: the trained catalogue's ``key`` and ``text`` (item ids 1..N in order).
        device: where :attr:`Catalogue.table` lives.
        embed_trained: the trained catalogue's ranking vectors ``[N + 1, width]``, computed
            again for a build (it needs the run's dataset and cache).
        sample_queries: some of the run's own query vectors against given ranking vectors,
            which shape an HNSW graph (:func:`iisan.search.column_scale`); ``None``: none.
        stage: the scorer's served first stage (the index then has two stages), or ``None``.
    """

    def __init__(self, run_dir: Path, trained: pl.DataFrame, device: torch.device,
                 embed_trained: Callable[[], np.ndarray],
                 sample_queries: Callable[[np.ndarray], np.ndarray] | None = None,
                 stage: FirstStage | None = None) -> None:
        self.run_dir = run_dir
        self.index_dir = run_dir / INDEX_DIR
        self.trained_items = len(trained)
        self.device = device
        self._keys: list[str] = ["", *trained["key"].to_list()]
        self._titles: list[str | None] = [None, *trained["text"].to_list()]
        self._embed_trained = embed_trained
        self._sample_queries = sample_queries
        self.stage = stage
        self._weights = ranking_digest(run_dir)
        self._identity = run_identity(run_dir)
        self.replaced = False  # the run on disk is another one now: see check_identity
        self._checked = time.monotonic()
        self.lock = threading.Lock()  # queries hold it while they read; a swap takes it
        self.current: Catalogue

    def open(self, rebuild: str | None = None, hnsw: HnswSettings = HnswSettings()) -> None:
        """Load the committed catalogue (building it first if the run has none), or with
        ``rebuild`` build a fresh index of that kind, keeping the items added since when they
        can be read."""
        if rebuild is None:
            stored = self._read()
            if stored is None:  # never built: build it, as the one writer
                with run_lock(self.run_dir, "building the index"):
                    stored = self._read()
                    self.current = self._view(stored) if stored is not None else self._build("flat", HnswSettings())
            else:
                self.current = self._view(stored)
            return
        with run_lock(self.run_dir, "rebuilding the index"):
            try:
                kept = load_index(self.index_dir, self.run_dir / WEIGHTS_FILE, self._weights, self.stage)
            except DatasetError as err:
                log.warning("the stored index is unreadable (%s): rebuilding without its added items", err)
                kept = None
            self.current = self._build(rebuild, hnsw, kept)

    def refresh(self, now: bool = False) -> bool:
        """Pick up a generation another process committed (at most every
        :data:`REFRESH_SECONDS` unless ``now``); ``True`` if the catalogue changed. Never waits
        for a writer."""
        if self.replaced:
            raise self._replaced_error()
        if not now and time.monotonic() - self._checked < REFRESH_SECONDS:
            return False
        self._checked = time.monotonic()
        self.check_identity()
        if committed_generation(self.index_dir) in (None, self.current.stored.generation):
            return False
        stored = self._read()
        if stored is None or stored.generation == self.current.stored.generation:
            return False
        self._swap(self._view(stored))
        log.info("loaded %s, committed by another process (%d items)", stored.generation,
                 self.current.num_items)
        return True

    def check_identity(self) -> None:
        """Refuse to go on once the run folder holds another run than the one loaded (trained
        again, its scorer fitted again): this process's model could neither answer for it nor
        add items it would keep.

        Raises:
            RunReplacedError: from then on, for every query and write.
        """
        if run_identity(self.run_dir) != self._identity:
            self.replaced = True
            log.error("%s", self._replaced_error())
            raise self._replaced_error()

    def _replaced_error(self) -> RunReplacedError:
        return RunReplacedError(f"the run {self.run_dir.name} was replaced on disk (trained or calibrated again) "
                                "since it was loaded; restart the server to serve the new one")

    def rebuild(self, kind: str, hnsw: HnswSettings) -> None:
        """Embed the trained catalogue again and commit a fresh ``kind`` index, keeping the
        items added since."""
        with run_lock(self.run_dir, "rebuilding the index"):
            self.refresh(now=True)
            self._swap(self._build(kind, hnsw, self.current.stored))

    def append(self, keys: list[str], texts: list[str], rows: np.ndarray,
               refuse_taken: Callable[[list[str]], None]) -> None:
        """Commit new items (their vectors ``rows``) after what is committed now, as one
        generation; ``refuse_taken`` checks the keys against it first."""
        with run_lock(self.run_dir, "adding items"):
            self.refresh(now=True)  # on top of whatever another process committed meanwhile
            refuse_taken(keys)
            now = self.current
            ids = np.arange(len(now.keys), len(now.keys) + len(keys))
            table = pl.concat([now.stored.added, pl.DataFrame({"item_id": ids.astype(np.int64), "key": keys,
                                                               "text": [t or None for t in texts]})])
            index = now.stored.index.extended(rows)
            full = index.full if isinstance(index, TwoStageIndex) else now.stored.embeddings.appended(rows)
            stored = StoredIndex(index, full, table, base_generation=now.stored.generation,
                                 segments=now.stored.segments)  # the rows on disk already: linked, not written
            # On disk first: only a committed generation becomes what queries read.
            stored.generation = save_index(self.index_dir, stored, self.trained_items, self._weights)
            self._swap(self._view(stored))

    def _swap(self, catalogue: Catalogue) -> None:
        with self.lock:
            self.current = catalogue

    def _read(self) -> StoredIndex | None:
        """The committed index (``None`` when there is none), read without a lock."""
        for _ in range(READ_TRIES):
            generation = committed_generation(self.index_dir)
            try:
                return load_index(self.index_dir, self.run_dir / WEIGHTS_FILE, self._weights, self.stage)
            except DatasetError:
                if committed_generation(self.index_dir) == generation:
                    raise  # nothing moved under the read: the index is damaged
        raise DatasetError(f"{self.index_dir} changed {READ_TRIES} times while being read; try again")

    def _build(self, kind: str, hnsw: HnswSettings, keep: StoredIndex | None = None) -> Catalogue:
        """Embed the trained catalogue, index it with ``keep``'s added items, and commit it."""
        base = self._embed_trained()
        if keep is None:
            rows = np.zeros((0, base.shape[1]), dtype=np.float32)
            added = empty_added_table()
        else:
            rows, added = keep.embeddings.extra, keep.added
        embeddings = ItemRows(base, rows)
        shaped = kind == "hnsw" and self._sample_queries is not None
        scale = None
        if shaped:  # the graph is over what the first stage searches
            queries = self._sample_queries(embeddings.array())
            scale = column_scale(queries @ self.stage.query_map if self.stage is not None else queries)
        index = (self.stage.index(embeddings, kind, hnsw, scale=scale) if self.stage is not None
                 else ItemIndex(embeddings.array(), kind, hnsw, scale=scale))
        stored = StoredIndex(index, embeddings, added)
        stored.generation = save_index(self.index_dir, stored, self.trained_items, self._weights)
        return self._view(stored)

    def _view(self, stored: StoredIndex) -> Catalogue:
        keys = self._keys + stored.added["key"].to_list()
        titles = self._titles + stored.added["text"].to_list()
        table = stored.embeddings.on(self.device)  # rows read as queries need them
        ids = {key: item_id for item_id, key in enumerate(keys) if item_id}
        if len(ids) != len(keys) - 1:  # added items never repeat a key; a damaged or edited table would
            raise DatasetError(f"the index of {self.run_dir.name} repeats item keys among its added items; "
                               "rebuild it: `iisan index build RUN`")
        return Catalogue(stored, keys, titles, ids, table)
