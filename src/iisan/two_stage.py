"""Two-stage search: a cheap first stage over narrow item codes, whose best candidates are
scored again with the full item vectors (what a blended run serves; the narrow map is
fitted by :mod:`iisan.scoring.compact`).

The first stage holds, per item, its full vector mapped to ``w`` floats and coded as ``w``
signed bytes (``round(x / s)`` with ``s`` the largest magnitude of each column over the
catalogue, divided by 127); a query is mapped the same way, multiplied by ``s`` and coded
with its own largest magnitude. Their integer dot product ranks items as the narrow inner
product does, up to the codes' rounding (on Scientific it chooses the same candidates as
float32 to four decimals of NDCG@10), and computes in int8 (``torch._int_mm``: on a 2-core
CPU, 16 queries over 100,000 items at w = 128 in 2.7 ms, where float32 at w = 64 takes 5.8).
The integers are exact in float32 too, so evaluation can compute the same scores in bulk.

The first stage's ``candidates`` best are the ones of largest *key*, ``score * 2^32 + (2^32 -
1 - id)``: distinct for every item, so equal scores go to the lowest id and the candidates
never depend on which other queries were searched alongside (:func:`first_stage_top`).
They are scored again with the full vectors (read row by row, from disk:
:class:`~iisan.item_rows.ItemRows`), best first, equal scores by item id.

An HNSW first stage (``--index hnsw``, for catalogues past a million items) is faiss's graph
over the float narrow vectors instead: approximate, and its candidates scored again the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from iisan.item_rows import ItemRows
from iisan.search import HnswSettings, ItemIndex

CODE_MAX = 127
ID_BITS = 32  # room for item ids in a key: 4e9 items
SELECT_BLOCK = 16  # keys per block when the best candidates are selected (first_stage_top)
MAP_CHUNK = 16384  # full rows mapped at once: bounded memory over a memory-mapped catalogue
# torch 2.13's int8 kernel on the CPU gave wrong sums for a width of 1 (3 and more: right): narrower
# codes take the float32 path, which gives the same integers
INT_MM_WIDTH = 8
EXCLUDED = torch.iinfo(torch.int32).min + 1  # below every item's score (at most 127 * 127 * w); padding below
PADDING = torch.iinfo(torch.int32).min


def item_codes(narrow: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``[n, w]`` int8: narrow item vectors coded by their columns' ``scale`` (values beyond
    it, items added later, are clipped: the second stage scores them exactly)."""
    return (narrow / scale).round().clamp(-CODE_MAX, CODE_MAX).to(torch.int8)


def query_codes(narrow: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``[q, w]`` int8: narrow queries times the items' ``scale``, coded by their own largest
    magnitude (a positive factor per query: it does not change the query's ranking)."""
    weighted = narrow * scale
    top = weighted.abs().amax(dim=1, keepdim=True).clamp(min=torch.finfo(weighted.dtype).tiny)
    return (weighted * (CODE_MAX / top)).round().clamp(-CODE_MAX, CODE_MAX).to(torch.int8)


def code_scores(queries: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``[q, n]`` int32: the codes' integer dot products, in int8 where torch offers it (the
    same integers as float32 gives them: every partial sum is exact below 2^24)."""
    if queries.shape[1] >= INT_MM_WIDTH:
        try:
            return torch._int_mm(queries, items.t())
        except (AttributeError, RuntimeError):  # no int8 kernel for this device or shape
            pass
    return (queries.float() @ items.float().t()).int()


def first_stage_top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Columns (item ids) of the ``count`` best integer ``scores [q, n]`` (int32; excluded items
    at :data:`EXCLUDED`), best first: larger score first, then lower id. Equal scores never
    depend on which other queries were searched alongside.

    Without ranking all ``n``: the best lie in the ``count`` blocks of :data:`SELECT_BLOCK`
    whose best are best (a block holding one of them has a best at least as good, and
    ``count`` blocks ahead of it would hold ``count`` items ahead of it), so only those
    blocks' ``count * SELECT_BLOCK`` scores are ordered, by the key ``score * 2^32 + (2^32 - 1 -
    id)``, distinct for every item."""
    queries, n = scores.shape
    count = min(count, n)
    pad = -n % SELECT_BLOCK
    if pad:  # below even excluded items: never chosen, since count <= n
        scores = torch.nn.functional.pad(scores, (0, pad), value=PADDING)
    best = scores.view(queries, -1, SELECT_BLOCK).amax(dim=2).long()  # [q, blocks]
    blocks = torch.arange(best.shape[1], device=scores.device)
    chosen = (best * (1 << ID_BITS) + ((1 << ID_BITS) - 1 - blocks)).topk(min(count, best.shape[1]), dim=1).indices
    columns = (chosen.unsqueeze(-1) * SELECT_BLOCK + torch.arange(SELECT_BLOCK, device=scores.device)).reshape(queries, -1)
    keys = torch.gather(scores, 1, columns).long() * (1 << ID_BITS) + ((1 << ID_BITS) - 1 - columns)
    return torch.gather(columns, 1, keys.topk(count, dim=1).indices)


@dataclass(frozen=True)
class FirstStage:
    """How a two-stage index narrows full vectors (a scorer's compact stage, as arrays)."""

    query_map: np.ndarray  # [width, w]
    item_map: np.ndarray  # [width, w]
    code_scale: np.ndarray  # [w]: each narrow column's largest magnitude over the catalogue, / 127
    candidates: int

    @property
    def width(self) -> int:
        return self.item_map.shape[1]

    def index(self, full: ItemRows | np.ndarray, kind: str = "flat", hnsw: HnswSettings = HnswSettings(), built=None,
              scale: np.ndarray | None = None, codes: np.ndarray | None = None) -> TwoStageIndex:
        """A two-stage index over ``full``'s rows, its first stage ``flat`` (int8 codes; saved
        ones: ``codes``) or ``hnsw`` (a saved graph: ``built``, shaped by ``scale``)."""
        full = full if isinstance(full, ItemRows) else ItemRows(np.asarray(full, dtype=np.float32))
        if kind == "flat":
            first = CodedRows(torch.from_numpy(codes) if codes is not None else
                              item_codes(self.narrow(full), torch.from_numpy(self.code_scale)), self)
        else:
            first = ItemIndex(self.narrow(full).numpy() if built is None else np.zeros((1, self.width), np.float32),
                              kind, hnsw, built=built, scale=scale)
        return TwoStageIndex(first, full, self)

    def narrow(self, full: ItemRows) -> torch.Tensor:
        """``[len(full), w]`` float32: every row mapped, a chunk at a time."""
        item_map = torch.from_numpy(np.asarray(self.item_map, dtype=np.float32))
        # a copy of each chunk: torch does not take a read-only memory map's pages
        parts = [torch.from_numpy(np.array(full.base[s : s + MAP_CHUNK], dtype=np.float32)) @ item_map
                 for s in range(0, len(full.base), MAP_CHUNK)]
        return torch.cat([*parts, torch.from_numpy(full.extra) @ item_map])

    def narrow_queries(self, queries: np.ndarray) -> np.ndarray:
        # torch, not numpy: numpy's BLAS keeps a thread pool of its own, which busy-waits
        # between the service's small products, on the cores the requests need
        return (torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
                @ torch.from_numpy(self.query_map)).numpy()


class CodedRows:
    """The exact first stage: every item's int8 code (row 0, padding, never chosen), held with
    zero rows after them up to a whole number of selection blocks (never chosen either)."""

    kind = "flat"
    faiss = None
    scale = None

    def __init__(self, codes: torch.Tensor, stage: FirstStage) -> None:
        self.size = len(codes) - 1  # items: rows 1..size
        pad = -len(codes) % SELECT_BLOCK
        self.codes = torch.cat([codes, codes.new_zeros(pad, codes.shape[1])]) if pad else codes
        self.stage = stage
        self.dim = codes.shape[1]
        self.hnsw = HnswSettings()

    @property
    def graph_dim(self) -> int:
        return self.dim

    @property
    def item_codes(self) -> torch.Tensor:
        """``[size + 1, w]``: the codes of the padding row and the items, what is saved."""
        return self.codes[: self.size + 1]

    def extended(self, narrow: np.ndarray) -> CodedRows:
        rows = item_codes(torch.from_numpy(np.asarray(narrow, dtype=np.float32)), torch.from_numpy(self.stage.code_scale))
        return CodedRows(torch.cat([self.item_codes, rows]), self.stage)

    def candidates(self, narrow_queries: np.ndarray, count: int, exclude: list[set[int]]) -> np.ndarray:
        """``[q, count]`` item ids (0 where fewer items are left), best first."""
        codes = query_codes(torch.from_numpy(narrow_queries), torch.from_numpy(self.stage.code_scale))
        scores = code_scores(codes, self.codes)
        scores[:, 0] = EXCLUDED  # the padding item
        scores[:, self.size + 1 :] = PADDING  # the rows that make whole blocks
        rows = [row for row, ids in enumerate(exclude) for _ in ids]
        if rows:  # a handful per query: set where they are
            scores[torch.tensor(rows), torch.tensor([i for ids in exclude for i in ids])] = EXCLUDED
        top = first_stage_top(scores, min(count, self.size + 1))
        return torch.where(torch.gather(scores, 1, top) > EXCLUDED, top, 0).numpy()


class TwoStageIndex:
    """A first stage over narrow item vectors whose best ``candidates`` are scored again with the
    full ones: what a blended run serves (see the module).

    Args:
        first: :class:`CodedRows` (exact, ``flat``) or an HNSW :class:`~iisan.search.ItemIndex`
            over the narrow vectors.
        full: every item's full vector (row 0 padding), read row by row for the second stage.
        stage: the maps, the codes' scale and how many candidates the second stage scores.
    """

    def __init__(self, first: CodedRows | ItemIndex, full: ItemRows, stage: FirstStage) -> None:
        self.first = first
        self.full = full
        self.stage = stage
        self.dim = full.width

    # What a stored index and the service read of an index: the first stage's.
    kind = property(lambda self: self.first.kind)
    hnsw = property(lambda self: self.first.hnsw)
    faiss = property(lambda self: self.first.faiss)
    scale = property(lambda self: self.first.scale)
    size = property(lambda self: self.first.size)
    graph_dim = property(lambda self: self.first.graph_dim)

    def extended(self, rows: np.ndarray) -> TwoStageIndex:
        """A new index with ``rows`` (full vectors) after this one's items; this one unchanged."""
        narrow = (torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
                  @ torch.from_numpy(self.stage.item_map)).numpy()
        return TwoStageIndex(self.first.extended(narrow), self.full.appended(rows), self.stage)

    def search(self, queries: np.ndarray, k: int, exclude: list[set[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`ItemIndex.search`, for full queries: the first stage's best
        ``max(candidates, k)`` (never an excluded item), ordered by their full scores."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        exclude = exclude or [set() for _ in range(len(queries))]
        narrow = self.stage.narrow_queries(queries)
        count = max(self.stage.candidates, k)
        if isinstance(self.first, CodedRows):
            found = self.first.candidates(narrow, count, exclude)
        else:
            found, _ = self.first.search(narrow, count, exclude)
        found.sort(axis=1)  # read in id order, the disk's (the full scores order them below)
        scores = self.full.dot(found, queries)
        scores[found == 0] = -np.inf  # fewer items than candidates
        # best first; equal scores by item id, lowest first (as the exact index orders them)
        order = np.lexsort((found, -scores), axis=1)[:, :k]
        ids, out = np.take_along_axis(found, order, 1), np.take_along_axis(scores, order, 1).astype(np.float32)
        ids[~np.isfinite(out)] = 0
        return ids, out
