"""Recommendations from a trained run: history of item keys in, top-k item keys out.

At load, the item embeddings come from the run's stored index (``RUN/index``), built once
from the trained model and saved on first use. A query is one user-encoder pass over the
history's embeddings and one index search, whatever the catalogue size.

New items need no retraining: :meth:`Recommender.add_items` runs the frozen encoders and the
trained item tower on their content, appends the embeddings to the index and persists them,
so they can be recommended (and used in histories) at once.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from iisan.assemble import Assembled, TrainedRun, assemble_run, load_trained
from iisan.errors import (
    CacheMismatchError, ConfigError, DatasetError, IisanError, InputError, NonFiniteError, UnknownItemError,
)
from iisan.evaluation.runner import item_embeddings
from iisan.features.live import RawContentSource
from iisan.run.files import WEIGHTS_FILE
from iisan.run.index_store import (
    INDEX_DIR, StoredIndex, committed_generation, load_index, save_index, weights_digest,
)
from iisan.run.lock import run_lock
from iisan.search import HnswSettings, ItemIndex
from iisan.serving.intake import vet_items

log = logging.getLogger(__name__)

RECALL_CHUNK = 128
# How stale a query's catalogue may be against another process's commit: one small file
# read per period, not per request.
REFRESH_SECONDS = 2.0
# New items embedded at once: bounds the images and encoder states held, whatever the file's length.
ADD_BATCH = 256
READ_TRIES = 5


@dataclass(frozen=True)
class Query:
    """One recommendation request: see :meth:`Recommender.recommend`."""

    history: list[str]
    k: int = 10
    exclude_seen: bool = True
    on_unknown: str = "raise"


@dataclass(frozen=True)
class Catalogue:
    """Everything a query reads, replaced as one object: a query sees the catalogue before an
    addition or after it, never half of it, and a failed save leaves the old one in place."""

    stored: StoredIndex
    keys: list[str]  # by item id; id 0 is padding
    titles: list[str | None]
    ids: dict[str, int]
    table: torch.Tensor  # the embeddings on the model's device: what the user encoder reads


class Recommender:
    """A trained run, ready to answer queries.

    Thread-safe, and safe beside other processes: changes to the run (new items, an index
    build) hold the run's write lock (:mod:`iisan.run.lock`) and start from the generation
    last committed on disk, whoever committed it. Queries never wait for a writer: new
    items are embedded outside every lock, and a query is locked out only while the new
    catalogue object replaces the old. Generations that other processes commit are
    picked up before this one writes and, for queries, within :data:`REFRESH_SECONDS`.
    """

    def __init__(self, trained: TrainedRun, run_dir: Path, rebuild: str | None = None,
                 hnsw: HnswSettings = HnswSettings()) -> None:
        self.trained = trained
        self.model = trained.model
        self.device = self.model.device
        self.run_dir = run_dir
        self._trained_keys: list[str] = ["", *trained.items["key"].to_list()]
        self._trained_titles: list[str | None] = [None, *trained.items["text"].to_list()]
        self.max_seq_len = trained.config.user.max_seq_len
        self._lock = threading.Lock()
        self._live = None  # the frozen encoders, loaded on the first add_items
        self._parts: Assembled | None = None  # dataset and cache, only to re-embed the catalogue
        self._weights = weights_digest(self.weights_file)
        self._checked = time.monotonic()
        if rebuild is None:
            stored = self._load_stored()
            if stored is None:  # never built: build it, as the one writer
                with run_lock(run_dir, "building the index"):
                    stored = self._load_stored()
                    self._catalogue = self._catalogue_of(stored) if stored is not None else self._build("flat", HnswSettings())
            else:
                self._catalogue = self._catalogue_of(stored)
        else:
            with run_lock(run_dir, "rebuilding the index"):
                try:  # items added since the last build survive a rebuild when they can be read
                    kept = load_index(self.index_dir, self.weights_file, self._weights)
                except DatasetError as err:
                    log.warning("the stored index is unreadable (%s): rebuilding without its added items", err)
                    kept = None
                self._catalogue = self._build(rebuild, hnsw, kept)

    def _load_stored(self) -> StoredIndex | None:
        """The committed index (``None`` when there is none), read without a lock, so readers
        never wait for writers. A commit can clean away the generation being read; then the
        pointer names a newer one, which is read instead."""
        for _ in range(READ_TRIES):
            generation = committed_generation(self.index_dir)
            try:
                return load_index(self.index_dir, self.weights_file, self._weights)
            except DatasetError:
                if committed_generation(self.index_dir) == generation:
                    raise  # nothing moved under the read: the index is damaged
        raise DatasetError(f"{self.index_dir} changed {READ_TRIES} times while being read; try again")

    def refresh(self, now: bool = False) -> bool:
        """Pick up a generation another process committed (at most every
        :data:`REFRESH_SECONDS` unless ``now``); ``True`` if the catalogue changed. Never waits
        for a writer."""
        if not now and time.monotonic() - self._checked < REFRESH_SECONDS:
            return False
        self._checked = time.monotonic()
        if committed_generation(self.index_dir) in (None, self._catalogue.stored.generation):
            return False
        stored = self._load_stored()
        if stored is None or stored.generation == self._catalogue.stored.generation:
            return False
        catalogue = self._catalogue_of(stored)
        with self._lock:
            self._catalogue = catalogue
        log.info("loaded %s, committed by another process (%d items)", stored.generation, len(catalogue.keys) - 1)
        return True

    @classmethod
    def load(cls, run_dir: str | Path, rebuild: str | None = None, hnsw: HnswSettings = HnswSettings(),
             device: str = "auto") -> Recommender:
        """Load a run and its index from the run folder alone (its dataset and cache may be
        gone; they are needed only to build the index again).

        The model runs on ``device`` (see :func:`iisan.devices.pick_device`); the index
        searches on the CPU.

        ``rebuild`` (``flat`` or ``hnsw``): build a fresh index of that kind whatever state the
        stored one is in, keeping the items added since when they are readable.

        Raises:
            ConfigError, DatasetError: the run or its index cannot be used.
        """
        from iisan.devices import pick_device

        run_dir = Path(run_dir)
        return cls(load_trained(run_dir, pick_device(device)), run_dir, rebuild, hnsw)

    @property
    def parts(self) -> Assembled:
        """The run's dataset, cache and feature source: what embedding the catalogue again needs.

        Raises:
            DatasetError: they are no longer where the run was trained from.
        """
        if self._parts is None:
            try:
                self._parts = assemble_run(self.run_dir, device=self.device)
            except (DatasetError, CacheMismatchError) as err:
                raise DatasetError(f"embedding the catalogue again needs the run's dataset and cache, "
                                   f"recorded in {self.run_dir / 'config.json'}: {err}") from None
        return self._parts

    @property
    def index_dir(self) -> Path:
        return self.run_dir / INDEX_DIR

    @property
    def weights_file(self) -> Path:
        return self.run_dir / WEIGHTS_FILE

    @property
    def index(self) -> ItemIndex:
        return self._catalogue.stored.index

    @property
    def keys(self) -> list[str]:
        return self._catalogue.keys

    @property
    def ids(self) -> dict[str, int]:
        return self._catalogue.ids

    @property
    def added(self):
        """The items added since the index was built: item_id, key, text (a polars DataFrame)."""
        return self._catalogue.stored.added

    @property
    def embeddings(self) -> torch.Tensor:
        """Every item's embedding ``[N + 1 + added, d]`` (row 0 padding), sharing memory with the index's source."""
        return torch.from_numpy(self._catalogue.stored.embeddings)

    @property
    def num_items(self) -> int:
        return len(self.keys) - 1

    @property
    def trained_items(self) -> int:
        """Items of the training catalogue; ids above it were added later."""
        return len(self.trained.items)

    def title(self, key: str) -> str | None:
        catalogue = self._catalogue
        return catalogue.titles[catalogue.ids[key]]

    def rebuild_index(self, kind: str = "flat", hnsw: HnswSettings = HnswSettings()) -> None:
        """Recompute the trained catalogue's embeddings and store a fresh ``kind`` index,
        keeping the items added since."""
        with run_lock(self.run_dir, "rebuilding the index"):
            self.refresh(now=True)
            catalogue = self._build(kind, hnsw, self._catalogue.stored)
            with self._lock:
                self._catalogue = catalogue

    def _build(self, kind: str, hnsw: HnswSettings, keep: StoredIndex | None = None) -> Catalogue:
        """Embed the trained catalogue, index it with ``keep``'s added items, and commit it."""
        base = item_embeddings(self.model, self.parts.source, self.trained_items).cpu().numpy()
        if keep is None:
            rows = np.zeros((0, base.shape[1]), dtype=np.float32)
            added = pl.DataFrame(schema={"item_id": pl.Int64, "key": pl.String, "text": pl.String})
        else:
            rows, added = keep.embeddings[self.trained_items + 1:], keep.added
        embeddings = np.concatenate([base, rows])
        stored = StoredIndex(ItemIndex(embeddings, kind, hnsw), embeddings, added)
        stored.generation = save_index(self.index_dir, stored, self.trained_items, self._weights)
        return self._catalogue_of(stored)

    def _catalogue_of(self, stored: StoredIndex) -> Catalogue:
        keys = self._trained_keys + stored.added["key"].to_list()
        titles = self._trained_titles + stored.added["text"].to_list()
        table = torch.from_numpy(stored.embeddings).to(self.device)  # shares memory on the CPU
        return Catalogue(stored, keys, titles, {key: item_id for item_id, key in enumerate(keys) if item_id}, table)

    def _known_ids(self, query: Query) -> list[int]:
        if query.on_unknown not in ("raise", "skip"):
            raise ConfigError(f"on_unknown must be raise or skip, got {query.on_unknown!r}")
        if query.k < 1:
            raise ConfigError(f"k must be positive, got {query.k}")
        unknown = [key for key in query.history if key not in self.ids]
        if unknown and query.on_unknown == "raise":
            raise UnknownItemError(unknown)
        ids = [self.ids[key] for key in query.history if key in self.ids]
        if not ids:
            raise ConfigError("the history holds no known item")
        return ids

    def recommend_many(self, queries: list[Query]) -> list[list[tuple[str, float]] | IisanError]:
        """Answer several queries with one user-encoder pass and one index search.

        What the HTTP service does with requests that arrive together: a batch costs little
        more than one query. Each answer is a list of ``(key, score)`` or, for a query that
        cannot be answered (unknown keys, empty history, bad ``k``), the error itself.
        """
        results: list[list[tuple[str, float]] | IisanError] = [[] for _ in queries]
        self.refresh()
        with self._lock:
            rows: list[tuple[int, list[int]]] = []
            for n, query in enumerate(queries):
                try:
                    rows.append((n, self._known_ids(query)))
                except IisanError as err:
                    results[n] = err
            if not rows:
                return results
            inputs = np.zeros((len(rows), self.max_seq_len), dtype=np.int64)
            for row, (_, ids) in enumerate(rows):
                recent = ids[-self.max_seq_len:]
                inputs[row, -len(recent):] = recent
            vectors = self.model.user_vectors(self._catalogue.table, inputs).cpu().numpy()
            finite = np.isfinite(vectors).all(axis=1)
            exclude = [set(ids) if queries[n].exclude_seen else set() for n, ids in rows]
            k = min(max(queries[n].k for n, _ in rows), self.num_items)
            found, scores = self.index.search(np.where(finite[:, None], vectors, 0), k, exclude)
            for row, (n, _) in enumerate(rows):
                if not finite[row]:  # never ranked: a NaN vector would order items arbitrarily
                    results[n] = NonFiniteError("the model gives a non-finite user vector for this history; "
                                                "the run's weights are damaged: retrain the run")
                    continue
                results[n] = [(self.keys[i], float(s)) for i, s in zip(found[row, :queries[n].k], scores[row])
                              if i > 0]
        return results

    def recommend(self, history: list[str], k: int = 10, exclude_seen: bool = True,
                  on_unknown: str = "raise") -> list[tuple[str, float]]:
        """The ``k`` best next items for a user who interacted with ``history`` (oldest first).

        Args:
            history: original item keys; only the last ``max_seq_len`` feed the model.
            exclude_seen: leave the history's items out of the answer.
            on_unknown: ``raise`` (:class:`UnknownItemError` naming them) or ``skip``.
        """
        result = self.recommend_many([Query(history, k, exclude_seen, on_unknown)])[0]
        if isinstance(result, IisanError):
            raise result
        return result

    def add_items(self, items: Iterable[dict[str, Any]], batch_size: int = ADD_BATCH) -> list[str]:
        """Embed new items from their content and add them to the catalogue, persisted.

        Each item is ``{"key": str, "text": str | None, "image": bytes | str | Path | None}``
        (an image as encoded bytes or a file path). The item needs the content the model
        reads: text for a text model, text or an image for a multimodal one.

        ``items`` may be any iterable (a generator reading a file, :func:`~iisan.serving.intake.iter_new_items`):
        it is read and embedded ``batch_size`` items at a time, and only each item's
        vector, key and text are kept, so memory does not grow with images or states. All
        of them are committed together at the end, as one generation.

        Returns:
            the added keys.

        Raises:
            InputError: a malformed item, a key already in the catalogue, an unreadable
                image; nothing is added then.
        """
        keys: list[str] = []
        texts: list[str] = []
        rows: list[np.ndarray] = []
        batch: list[dict[str, Any]] = []
        for item in itertools.chain(items, [None]):
            if item is not None:
                batch.append(item)
            if batch and (item is None or len(batch) == batch_size):
                batch_keys, batch_texts, images = vet_items(batch, self.model.layers, first=len(keys) + 1)
                keys += batch_keys
                texts += batch_texts
                self._refuse_taken(keys)
                rows.append(self._embed_new(batch_texts, images))  # outside every lock
                batch = []
        if not keys:
            raise InputError("no items to add")
        return self._commit_new(keys, texts, np.concatenate(rows))

    def _refuse_taken(self, keys: list[str]) -> None:
        """Checked per batch (fail early) and again under the lock, against what is committed then."""
        duplicates = sorted({key for key, count in Counter(keys).items() if count > 1})
        if duplicates:
            raise InputError(f"keys given twice: {', '.join(map(repr, duplicates[:10]))}")
        taken = [key for key in keys if key in self.ids]
        if taken:
            raise InputError(f"already in the catalogue: {', '.join(map(repr, taken[:10]))}")

    def _commit_new(self, keys: list[str], texts: list[str], rows: np.ndarray) -> list[str]:
        """Append embedded new items to the catalogue committed on disk, as one generation."""
        with run_lock(self.run_dir, "adding items"):
            self.refresh(now=True)  # on top of whatever another process committed meanwhile
            self._refuse_taken(keys)
            now = self._catalogue
            ids = np.arange(len(now.keys), len(now.keys) + len(keys))
            table = pl.concat([now.stored.added, pl.DataFrame({"item_id": ids.astype(np.int64), "key": keys,
                                                               "text": [t or None for t in texts]})])
            stored = StoredIndex(now.stored.index.extended(rows), np.concatenate([now.stored.embeddings, rows]), table,
                                 base_generation=now.stored.generation)
            # On disk first: only a committed generation becomes what queries read.
            stored.generation = save_index(self.index_dir, stored, self.trained_items, self._weights)
            catalogue = self._catalogue_of(stored)
            with self._lock:
                self._catalogue = catalogue
        return keys

    def _embed_new(self, texts: list[str], images: list[bytes | None]) -> np.ndarray:
        """The catalogue vectors of new items ``[n, width]``. Their final ids are not known
        yet and need not be: any id past the trained catalogue gives the same vector (no id
        offset, the cold prior), so the first free ids stand in."""
        ids = np.arange(self.trained_items + 1, self.trained_items + 1 + len(texts))
        try:
            features = self._live_source().content_features(ids, texts, images)
        except (OSError, ValueError) as err:
            raise InputError(f"cannot decode an image: {err}") from err
        self.model.eval()
        with torch.no_grad():
            rows = self.model.catalogue_vectors(features.to(self.device)).cpu().numpy().astype(np.float32)
        if not np.isfinite(rows).all():
            raise NonFiniteError("the model gives non-finite embeddings for these items; nothing was added")
        return rows

    def health(self) -> dict[str, Any]:
        """``{"status": "ok" | "failing", "items": N, "index": kind, "problems": [...]}``: the
        catalogue's parts agree and a probe query is answered."""
        catalogue = self._catalogue
        problems = []
        sizes = {len(catalogue.keys) - 1, len(catalogue.stored.embeddings) - 1, catalogue.stored.index.size}
        if len(sizes) > 1:
            problems.append(f"catalogue parts disagree on its size ({sorted(sizes)})")
        elif catalogue.ids:
            try:
                probe = self.recommend_many([Query([catalogue.keys[1]], k=1)])[0]
            except Exception as err:  # noqa: BLE001 - reported, which is the point of a health check
                probe = err
            if isinstance(probe, Exception):
                problems.append(f"a probe query fails: {type(probe).__name__}: {probe}")
        return {"status": "failing" if problems else "ok", "items": len(catalogue.keys) - 1,
                "index": catalogue.stored.index.kind, "problems": problems}

    def index_recall(self, queries: int = 1000, k: int = 10, seed: int = 0) -> dict[str, Any]:
        """Recall@k of the stored index against exact search, on test users' histories."""
        inputs = self.parts.splits.test.inputs
        rows = np.random.default_rng(seed).choice(len(inputs), size=min(queries, len(inputs)), replace=False)
        with self._lock:
            vectors = self.model.user_vectors(self._catalogue.table, inputs[rows]).cpu().numpy()
            found, _ = self.index.search(vectors, k)
            # Exact answers from the flat index, in chunks: a [queries, N] score matrix
            # would take gigabytes at the million-item sizes HNSW is meant for.
            exact_index = self.index if self.index.kind == "flat" else ItemIndex(self._catalogue.stored.embeddings, "flat")
            exact = np.concatenate([exact_index.search(vectors[s:s + RECALL_CHUNK], k)[0]
                                    for s in range(0, len(vectors), RECALL_CHUNK)])
        hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), exact.tolist()))
        return {"index": self.index.kind, "items": self.num_items, "queries": len(rows), "k": k,
                f"recall@{k}": round(hits / (len(rows) * k), 4)}

    def _live_source(self):
        """The encoders that embed new items' content as the catalogue's was (names and
        settings from the run's config.json; the weights come from the encoder packages)."""
        if self._live is None:
            if self.trained.encoder_modules:  # the encoder baselines run them inside the tower
                self._live = RawContentSource(None, self.trained.encoders, self.trained.encoder_modules)
            else:
                from iisan.features.live import LiveSource

                layers = self.model.layers
                self._live = LiveSource(None, {m: self.trained.encoders[m] for m in layers}, layers, self.device)
        return self._live
