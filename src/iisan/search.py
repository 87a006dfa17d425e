"""Top-k inner-product search over item embeddings: ``flat`` (exact) and ``hnsw`` (faiss).

``flat`` is exact (a matrix product and a top-k); ``hnsw`` (faiss ``IndexHNSWFlat``) is
approximate and meant for catalogues past a million items; ``iisan index check`` reports
its recall@10 against exact search. Row ``i`` of the embeddings is item id ``i``; row 0,
the padding id, is never indexed. How an index is stored in a run folder:
:mod:`iisan.run.index_store`.

The HNSW graph is not built on inner products. An inner product is not a distance: a graph
linked by it ties every item to the few of largest norm, and the items of small norm are
reached from almost nowhere (a blended run's vectors carry popularity in their norm: on
Scientific a graph on inner products returned 44% of the exact top-10, whatever its
``ef_search``). So the search is reduced to nearest neighbours, as is usual for maximum
inner-product search (Bachrach et al., RecSys 2014): each item gets one more coordinate,
``sqrt(R^2 - |x|^2)`` with ``R`` the largest norm at build time, so that every item lies on
the sphere of radius ``R``, and each query a 0 there; then ``|q - x|^2 = |q|^2 + R^2 - 2 q.x``,
which orders items as their inner products do, and the graph is built on that distance.
The graph's distances are also shaped by what queries weigh (``scale``, from
:func:`column_scale` over a sample of the run's own queries): each item column is multiplied
by the typical size of that column in a query, and each query divided by it, which leaves
every inner product as it was. Without it, columns that queries barely read (a blend's
content when its fitted weight is 0) decide which items are neighbours, and the graph leads
nowhere (a synthetic 100,000-item run: 0.04 of the exact top 10 lifted, 0.998 scaled).
On every trained run measured the scaled lift finds more of the exact top 10 than a graph on
inner products (docs/results/scale.md). Where a few items are far longer than all the
others, the lift crowds the rest together near one pole and does worse (3,000 random
vectors whose norms are log-normal, sigma 1, default settings, no scale: 0.54 of the exact
top 10 against 1.0); ``iisan index build`` reports the recall it reaches, and ``iisan
index check`` measures it. Graphs saved before the
lift (inner product, no extra coordinate) are still read and searched as they were built.
"""


from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch

from iisan.config import INDEX_KINDS
from iisan.errors import ConfigError

log = logging.getLogger(__name__)

KINDS = INDEX_KINDS
BLOCK = 128  # exact top-k works block by block: see blocked_topk
# Sane ranges of the HNSW settings, whoever gives them (an option, or index.json on disk): an
# ef_search of -5 answered one item for k=3; 4e8 took 3.5 GB for one query.
HNSW_BOUNDS = {"m": (2, 256), "ef_construction": (1, 4096), "ef_search": (1, 16_384)}


def column_scale(queries: np.ndarray) -> np.ndarray:
    """Per column, the root mean square of ``queries [q, d]``: how much a query weighs that
    column. Floored at a thousandth of the largest, so that no column is dropped outright (a
    query outside the sample may read it) and every inner product stays exact."""
    rms = np.sqrt(np.mean(np.square(queries, dtype=np.float64), axis=0))
    top = float(rms.max()) if rms.size else 0.0
    return np.maximum(rms, 1e-3 * top).astype(np.float32) if top > 0 else np.ones(queries.shape[1], np.float32)


@dataclass(frozen=True)
class HnswSettings:
    """``m`` links per node, ``ef_construction`` / ``ef_search`` candidate list sizes.

    ``ef_search`` 512: on a 1M-item catalogue, bench/serve.py's recall and latency against
    exact search chose it over 128 (the figures are in the README).
    """

    m: int = 32
    ef_construction: int = 200
    ef_search: int = 512

    def __post_init__(self) -> None:
        for name, (low, high) in HNSW_BOUNDS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(f"hnsw {name} must be an integer in {low}..{high:,}, got {value!r}")


class ItemIndex:
    """Top-k inner-product search over rows ``1..N`` of ``embeddings [N + 1, d]``; returns item ids.

    ``flat`` is one matrix product and a top-k in torch: exact, and at the batch sizes the
    service sees (1 to 64 queries) 1.5x faster on CPU than faiss ``IndexFlatIP``, whose
    per-query heap over every score costs more than the product itself. ``hnsw`` is faiss
    ``IndexHNSWFlat`` over the items lifted onto a sphere (the module says why); the items it
    finds are scored again exactly, so its scores are inner products like the flat index's.
    """

    def __init__(self, embeddings: np.ndarray, kind: str = "flat", hnsw: HnswSettings = HnswSettings(),
                 built=None, scale: np.ndarray | None = None) -> None:
        if kind not in KINDS:
            raise ConfigError(f"index must be one of {', '.join(KINDS)}, got {kind!r}")
        self.kind = kind
        self.hnsw = hnsw
        self.dim = embeddings.shape[1]
        # Rows of the flat index, zero-padded to whole blocks (blocked_topk); ``_size`` are real.
        self.rows = torch.zeros(0, self.dim)
        self._size = 0
        self.faiss = None
        self.lifted = False  # an HNSW graph over items lifted onto a sphere (the module)
        self.radius: float | None = None  # that sphere's, set by the first items a graph gets
        # what a query weighs each column (column_scale), for a lifted graph; None: all alike
        self.scale = np.asarray(scale, dtype=np.float32) if scale is not None and kind == "hnsw" else None
        fresh = built is None
        if kind == "hnsw":
            import faiss

            if built is None:
                built = faiss.IndexHNSWFlat(self.dim + 1, hnsw.m, faiss.METRIC_L2)
                built.hnsw.efConstruction = hnsw.ef_construction
            self.faiss = built
            self.faiss.hnsw.efSearch = hnsw.ef_search
            self.lifted = built.metric_type == faiss.METRIC_L2
            if self.lifted and built.ntotal:  # the first item was added at build time, on the sphere
                self.radius = float(np.linalg.norm(built.reconstruct(0)))
        if fresh or kind == "flat":
            self.add(embeddings[1:])

    @property
    def graph_dim(self) -> int:
        """The width of the vectors an HNSW graph holds: the items', plus one when lifted."""
        return self.dim + self.lifted

    @property
    def size(self) -> int:
        """Indexed items (padding excluded)."""
        return self.faiss.ntotal if self.faiss is not None else self._size

    def extended(self, rows: np.ndarray) -> ItemIndex:
        """A new index with ``rows`` after this one's items; this one is left as it was, so
        queries can go on against it until the new one is committed.

        The flat index shares its row buffer: rows are written past this index's size,
        where it never looks. HNSW graphs are cloned, then grown.
        """
        new = copy.copy(self)
        if self.faiss is not None:
            import faiss

            new.faiss = faiss.clone_index(self.faiss)
            new.faiss.hnsw.efSearch = self.hnsw.ef_search
        new.add(rows)
        return new

    def add(self, rows: np.ndarray) -> None:
        """Append rows in place; they get the next item ids."""
        if not len(rows):
            return
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if self.faiss is not None:
            self.faiss.add(self._lift(rows) if self.lifted else rows)
            return
        size = self._size + len(rows)
        if size > len(self.rows):  # grow with headroom, so adding items one by one stays cheap
            capacity = size if not self._size else max(size, self._size + self._size // 4)
            grown = torch.zeros(-(-capacity // BLOCK) * BLOCK, self.dim)
            grown[: self._size] = self.rows[: self._size]
            self.rows = grown
        self.rows[self._size : size] = torch.from_numpy(rows)
        self._size = size

    def _lift(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` with the coordinate that puts them on the graph's sphere. An item added
        after the build with a norm past the radius gets 0 there: it is still found, less
        reliably, and the log says so."""
        if self.scale is not None:
            rows = rows * self.scale
        squared = np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
        if self.radius is None:
            self.radius = float(np.sqrt(squared.max())) or 1.0
        outside = int((squared > self.radius**2 * (1 + 1e-6)).sum())
        if outside:
            log.warning("%d of the %d items added lie farther out than any item the HNSW graph was built "
                        "with: they are found less reliably; `iisan index build` rebuilds the graph", outside,
                        len(rows))
        extra = np.sqrt(np.maximum(self.radius**2 - squared, 0.0)).astype(np.float32)
        return np.hstack([rows, extra[:, None]])

    def search(self, queries: np.ndarray, k: int, exclude: list[set[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Item ids ``[q, k]`` and scores, best first; ``exclude[r]`` ids never appear in row ``r``.

        Equal scores are ordered by item id, lowest first, so an answer never depends on
        ``k`` or on which other queries were searched with it (the CLI and the HTTP service
        agree). Fewer than ``k`` results leave id 0 and score ``-inf`` at the end of a row.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        exclude = exclude or [set() for _ in range(len(queries))]
        if self.faiss is None:
            return self._exact(queries, k, exclude)
        fetch = min(self.size, k + max((len(e) for e in exclude), default=0))
        if self.lifted:
            scaled = queries / self.scale if self.scale is not None else queries
            on_equator = np.hstack([scaled, np.zeros((len(queries), 1), np.float32)])
            _, labels = self.faiss.search(on_equator, fetch)
            # the distances' order is the inner products'; their values are recomputed exactly
            found = self.faiss.reconstruct_batch(np.maximum(labels, 0).ravel())[:, : self.dim]
            scores = np.einsum("qfd,qd->qf", found.reshape(len(queries), fetch, self.dim), scaled)
        else:  # a graph saved before the lift: inner products
            scores, labels = self.faiss.search(queries, fetch)
        ids = np.zeros((len(queries), k), dtype=np.int64)
        out = np.full((len(queries), k), -np.inf, dtype=np.float32)
        for row in range(len(queries)):  # a row's exclusions are a handful of ids: cheap
            kept = sorted(((label + 1, score) for label, score in zip(labels[row], scores[row])
                           if label >= 0 and label + 1 not in exclude[row]), key=lambda pair: (-pair[1], pair[0]))[:k]
            for col, (item_id, score) in enumerate(kept):
                ids[row, col], out[row, col] = item_id, score
        return ids, out

    @torch.no_grad()
    def _exact(self, queries: np.ndarray, k: int, exclude: list[set[int]]) -> tuple[np.ndarray, np.ndarray]:
        size = self._size
        scores = torch.from_numpy(queries) @ self.rows.T  # [q, N rounded up to whole blocks]
        scores[:, size:] = -torch.inf  # the padding rows
        rows = [row for row, ids in enumerate(exclude) for _ in ids]
        if rows:
            cols = [item_id - 1 for ids in exclude for item_id in ids]
            scores[torch.tensor(rows), torch.tensor(cols)] = -torch.inf
        values, columns = blocked_topk(scores, min(k, size))
        ids = np.zeros((len(queries), k), dtype=np.int64)
        out = np.full((len(queries), k), -np.inf, dtype=np.float32)
        found = values.numpy()
        ids[:, : found.shape[1]] = np.where(np.isfinite(found), columns.numpy() + 1, 0)
        out[:, : found.shape[1]] = found
        return ids, out


def blocked_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best of ``scores [q, n]`` (``n`` a multiple of ``BLOCK``), ties to the lowest
    column: exactly a stable descending sort cut at ``k``, without ranking all ``n``.

    The k best scores lie in the k blocks first by (maximum, descending; block, ascending):
    a block holding one of them has a maximum at least that high, and k blocks ahead of it
    would hold k items ahead of it (a tie with a lower block is a tie with lower columns).
    So the k best of those blocks' ``k * BLOCK`` scores, taken in column order, replace a
    sort of all n.
    """
    queries, n = scores.shape
    maxima = scores.view(queries, n // BLOCK, BLOCK).amax(-1)
    blocks = stable_top(maxima, min(k, maxima.shape[1])).sort(dim=1).values  # in column order
    columns = (blocks.unsqueeze(-1) * BLOCK + torch.arange(BLOCK)).reshape(queries, -1)
    candidates = torch.gather(scores, 1, columns)
    best = stable_top(candidates, k)
    return torch.gather(candidates, 1, best), torch.gather(columns, 1, best)


def stable_top(values: torch.Tensor, k: int) -> torch.Tensor:
    """Columns of the ``k`` best of each row of ``values [q, n]``, best first, equal values
    by column: what a stable descending sort cut at ``k`` gives, at ``torch.topk``'s cost.

    ``topk`` may pick any of several values equal to its k-th; only a row with more values
    at least that high than ``k`` can have such a tie at the cut, and only those rows (rare
    but for masked items' ``-inf``) pay for the sort. Ties within the k are put in column
    order here.
    """
    top = torch.topk(values, k)
    chosen = top.indices.sort(dim=1).values  # column order ...
    order = torch.sort(torch.gather(values, 1, chosen), dim=1, descending=True, stable=True).indices
    chosen = torch.gather(chosen, 1, order)  # ... then best first, equal values keeping it
    tied = (values >= top.values[:, -1:]).sum(dim=1) > k
    if tied.any():
        rows = tied.nonzero().squeeze(1)
        chosen[rows] = torch.sort(values[rows], dim=1, descending=True, stable=True).indices[:, :k]
    return chosen
