"""Recommendations from a trained run: history of item keys in, top-k item keys out.

At load, the item embeddings come from the run's stored index (``RUN/index``), built once
from the trained model and saved on first use. A query is one user-encoder pass over the
history's embeddings and one index search, whatever the catalogue size.

New items need no retraining: :meth:`Recommender.add_items` runs the frozen encoders and the
trained item tower on their content, appends the embeddings to the index and persists them,
so they can be recommended (and used in histories) at once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iisan.assemble import Assembled, TrainedRun, assemble_run, load_trained
from iisan.config import IndexConfig, Query
from iisan.errors import (
    CacheMismatchError, ConfigError, DatasetError, IisanError, NonFiniteError, UnknownItemError,
)
from iisan.evaluation.ranking import item_embeddings
from iisan.search import HnswSettings, ItemIndex
from iisan.serving.catalogue import CatalogueStore
from iisan.serving.intake import ContentEmbedder, embed_in_batches, refuse_taken
from iisan.serving.users import DatasetUsers

log = logging.getLogger(__name__)

RECALL_CHUNK = 128
QUERY_SAMPLE = 1000  # validation users whose queries shape an HNSW graph
BUILD_RECALL_QUERIES = 200  # test users whose recall a build reports (an exact search of each)
# New items embedded at once: bounds the images and encoder states held, whatever the file's length.
ADD_BATCH = 256


class Recommender:
    """A trained run, ready to answer queries.

    Thread-safe, and safe beside other processes: its catalogue (:class:`CatalogueStore`) is
    changed by one writer at a time and picks up what other processes commit. Queries never
    wait for a writer: new items are embedded outside every lock, and a query is locked out
    only while the new catalogue object replaces the old."""

    def __init__(self, trained: TrainedRun, run_dir: Path, rebuild: str | None = None,
                 hnsw: HnswSettings = HnswSettings()) -> None:
        self.trained = trained
        self.ranker = trained.scorer  # the model with its scorer, or the model alone: what ranks
        self.device = self.ranker.device
        self.run_dir = run_dir
        self.max_seq_len = trained.config.user.max_seq_len
        self._embedder = ContentEmbedder(trained, len(trained.items))
        self._parts: Assembled | None = None  # dataset and cache, only to re-embed the catalogue
        self._users = DatasetUsers(run_dir)  # read on first use
        self.store = CatalogueStore(run_dir, trained.items, self.device, self._embed_trained,
                                    functools.partial(sample_queries, self),  # which shape an HNSW graph
                                    self.ranker.first_stage)
        self._lock = self.store.lock
        self.store.open(rebuild, hnsw)

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
    def index(self) -> ItemIndex:
        return self.store.current.stored.index

    @property
    def keys(self) -> list[str]:
        return self.store.current.keys

    @property
    def ids(self) -> dict[str, int]:
        return self.store.current.ids

    @property
    def added(self):
        """The items added since the index was built: item_id, key, text (a polars DataFrame)."""
        return self.store.current.stored.added

    @property
    def embeddings(self) -> torch.Tensor:
        """Every item's embedding ``[N + 1 + added, d]`` (row 0 padding), sharing memory with the index's source."""
        return torch.from_numpy(self.store.current.stored.embeddings.array())

    @property
    def num_items(self) -> int:
        return self.store.current.num_items

    @property
    def trained_items(self) -> int:
        """Items of the training catalogue; ids above it were added later."""
        return len(self.trained.items)

    def item(self, key: str) -> dict[str, Any]:
        """An item as the service and the CLI show it: key, title, whether added after training."""
        catalogue = self.store.current
        item = catalogue.ids[key]
        return {"key": key, "title": catalogue.titles[item], "added": item > self.trained_items}

    def _embed_trained(self) -> np.ndarray:
        # the assembled run's ranker: its word tables are made from the dataset's texts
        return item_embeddings(self.parts.scorer, self.parts.source, self.trained_items).cpu().numpy()

    def recommend_many(self, queries: list[Query]) -> list[list[tuple[str, float]] | IisanError]:
        """Answer several queries with one user-encoder pass and one index search.

        What the HTTP service does with requests that arrive together: a batch costs little
        more than one query. Each answer is a list of ``(key, score)`` or, for a query that
        cannot be answered (unknown keys, no known key, an unknown user), the error itself.
        """
        results: list[list[tuple[str, float]] | IisanError] = [[] for _ in queries]
        self.store.refresh()
        histories = [_history(query, self.history_of) for query in queries]  # before the lock: may load data
        with self._lock:
            catalogue = self.store.current  # read once: one generation for the whole batch
            rows: list[tuple[int, list[int]]] = []
            for n, query in enumerate(queries):
                try:
                    rows.append((n, known_ids(histories[n], query, catalogue.ids)))
                except IisanError as err:
                    results[n] = err
            if not rows:
                return results
            inputs = np.zeros((len(rows), self.max_seq_len), dtype=np.int64)
            for row, (_, ids) in enumerate(rows):
                recent = ids[-self.max_seq_len:]
                inputs[row, -len(recent):] = recent
            vectors = self.ranker.user_vectors(catalogue.table, inputs).cpu().numpy()
            finite = np.isfinite(vectors).all(axis=1)
            exclude = [set(ids) if queries[n].exclude_seen else set() for n, ids in rows]
            k = min(max(queries[n].k for n, _ in rows), catalogue.num_items)
            found, scores = catalogue.stored.index.search(np.where(finite[:, None], vectors, 0), k, exclude)
            for row, (n, _) in enumerate(rows):
                if not finite[row]:  # never ranked: a NaN vector would order items arbitrarily
                    results[n] = NonFiniteError("the model gives a non-finite user vector for this history; "
                                                "the run's weights are damaged: retrain the run")
                    continue
                top = zip(found[row, :queries[n].k].tolist(), scores[row].tolist())  # Python ints and floats
                results[n] = [(catalogue.keys[i], score) for i, score in top if i > 0]
        return results

    def history_of(self, user: str) -> list[str]:
        """The item keys of a user of the run's dataset, oldest first (every interaction
        prepared: training, validation and test items).

        Raises:
            DatasetError: the run's dataset is not where ``config.json`` says. UnknownUserError: no
                such user.
        """
        keys = self.store.current.keys
        return [keys[item] for item in self._users.history(user)]

    def recommend(self, history: list[str] | None = None, k: int = 10, exclude_seen: bool = True,
                  skip_unknown: bool = False, user: str | None = None) -> list[tuple[str, float]]:
        """The ``k`` best next items for a user who interacted with ``history`` (oldest first),
        or for ``user`` of the run's dataset: the fields of :class:`~iisan.config.Query`, one request's.

        Raises:
            ConfigError: a bad query (both or neither of history and user, ``k`` below 1).
            UnknownItemError: keys the catalogue does not hold (unless ``skip_unknown``).
        """
        query = Query(history=history, user=user, k=k, exclude_seen=exclude_seen, skip_unknown=skip_unknown)
        result = self.recommend_many([query])[0]
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
        def refuse(keys: list[str]) -> None:  # the catalogue's keys when called: another writer may add
            refuse_taken(keys, self.ids)

        keys, texts, rows = embed_in_batches(items, self.ranker.layers, self._embedder.embed, refuse, batch_size)
        self.store.append(keys, texts, rows, refuse)
        return keys

    def health(self) -> dict[str, Any]:
        """See :func:`health`."""
        return health(self)

    def index_recall(self, queries: int = 1000, k: int = 10, seed: int = 0) -> dict[str, Any]:
        """Recall@k of the stored index against exact search, on test users' histories."""
        return index_recall(self, queries, k, seed)


def sample_queries(recommender: Recommender, embeddings: np.ndarray) -> np.ndarray:
    """The query vectors of some validation users (:data:`QUERY_SAMPLE`) against the ranking
    vectors ``embeddings``: what an HNSW graph's distances are shaped by (iisan.search)."""
    inputs = recommender.parts.splits.valid.inputs
    rows = np.sort(np.random.default_rng(0).permutation(len(inputs))[:QUERY_SAMPLE])
    with torch.no_grad():
        table = torch.from_numpy(embeddings).to(recommender.device)
        return recommender.ranker.user_vectors(table, inputs[rows]).cpu().numpy()


def index_recall(recommender: Recommender, queries: int = 1000, k: int = 10, seed: int = 0) -> dict[str, Any]:
    """Recall@k of the stored index against exact search over the full vectors (a two-stage
    index's too), on test users' histories."""
    inputs = recommender.parts.splits.test.inputs
    rows = np.random.default_rng(seed).choice(len(inputs), size=min(queries, len(inputs)), replace=False)
    with recommender.store.lock:
        vectors = recommender.ranker.user_vectors(recommender.store.current.table, inputs[rows]).cpu().numpy()
        found, _ = recommender.index.search(vectors, k)
        # Exact answers from the flat index, in chunks: a [queries, N] score matrix
        # would take gigabytes at the million-item sizes HNSW is meant for.
        exact = isinstance(recommender.index, ItemIndex) and recommender.index.kind == "flat"
        exact_index = recommender.index if exact else ItemIndex(recommender.store.current.stored.embeddings.array(),
                                                                "flat")
        exact = np.concatenate([exact_index.search(vectors[s:s + RECALL_CHUNK], k)[0]
                                for s in range(0, len(vectors), RECALL_CHUNK)])
    hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), exact.tolist()))
    return {"index": recommender.index.kind, "items": recommender.num_items, "queries": len(rows), "k": k,
            f"recall@{k}": round(hits / (len(rows) * k), 4)}


def _history(query: Query, history_of) -> list[str] | IisanError | None:
    """``query``'s history: its own, or its user's (``history_of``), or why there is none."""
    try:
        return query.history if query.user is None else history_of(query.user)
    except IisanError as err:
        return err


def known_ids(history: list[str] | IisanError | None, query: Query, ids: dict[str, int]) -> list[int]:
    """The item ids of ``history``, ``query``'s (``ids``: key -> id), checked.

    Raises:
        UnknownItemError: unknown keys (unless ``query.skip_unknown``). ConfigError: no known
        key. The error reading a user's history, when that is what ``history`` holds.
    """
    if isinstance(history, IisanError):
        raise history
    unknown = [key for key in history if key not in ids]
    if unknown and not query.skip_unknown:
        raise UnknownItemError(unknown)
    known = [ids[key] for key in history if key in ids]
    if not known:
        raise ConfigError("the history holds no known item")
    return known


def health(recommender: Recommender) -> dict[str, Any]:
    """``{"status": "ok" | "failing", "items": N, "index": kind, "problems": [...]}``: the
    catalogue's parts agree and a probe query is answered."""
    with contextlib.suppress(IisanError):  # a replaced run, say: the probe query below reports it
        recommender.store.refresh()  # the catalogue as the next query sees it
    catalogue = recommender.store.current
    problems = []
    sizes = {catalogue.num_items, len(catalogue.stored.embeddings) - 1, catalogue.stored.index.size}
    if len(sizes) > 1:
        problems.append(f"catalogue parts disagree on its size ({sorted(sizes)})")
    elif catalogue.ids:
        try:
            probe = recommender.recommend_many([Query(history=(catalogue.keys[1],), k=1)])[0]
        except Exception as err:  # noqa: BLE001 - reported, which is the point of a health check
            probe = err
        if isinstance(probe, Exception):
            problems.append(f"a probe query fails: {type(probe).__name__}: {probe}")
    return {"status": "failing" if problems else "ok", "items": catalogue.num_items,
            "index": catalogue.stored.index.kind, "problems": problems}


def rebuild_index(run_dir: str | Path, config: IndexConfig = IndexConfig(),
                  device: str = "auto") -> dict[str, Any]:
    """(Re)build ``run_dir``'s item index of ``config.index`` kind from its trained model,
    whatever state the stored one is in; items added since training are kept when it can
    still be read. An approximate index also reports its recall@10 over
    :data:`BUILD_RECALL_QUERIES` test users (``iisan index check`` measures more), so a graph
    that misses much of the exact top 10 is seen when it is built, not when it serves."""
    import time

    start = time.perf_counter()
    hnsw = HnswSettings(m=config.hnsw_m, ef_search=config.ef_search)
    recommender = Recommender.load(run_dir, rebuild=config.index, hnsw=hnsw, device=device)
    result = {"index": config.index, "items": recommender.num_items, "added_items": len(recommender.added),
              "seconds": round(time.perf_counter() - start, 2), "folder": str(recommender.store.index_dir)}
    if config.index != "flat":
        result["recall@10"] = index_recall(recommender, BUILD_RECALL_QUERIES)["recall@10"]
    return result
