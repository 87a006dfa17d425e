"""The words of an item's text as a dense vector: TF-IDF over words and pairs of adjacent
words, hashed into a fixed number of signed columns.

A frozen sentence encoder places two titles close when they mean similar things; it keeps
little of the exact brand names, model numbers and sizes that tie a rare product to the
ones a user bought (``uxcell 0.02-1.00mm Metric Gap Gauge``). Matching those words is what
a search engine's TF-IDF does, and it needs no interaction and no training: an item added
after training gets its vector from its text alone. On Scientific, the content floor's
cosine over these vectors plus minilm's ranks validation targets 13% better than minilm's
alone (docs/results/new-and-rare-items.md).

An item's vector: lower-cased ``\\w+`` words and each pair of adjacent words are its terms;
term ``t`` weighs ``(1 + ln tf) * idf(t)`` with ``idf(t) = ln((1 + n) / (1 + df(t))) + 1``
over the ``n`` catalogue texts it was fitted on (scikit-learn's smoothed form). Each term
adds its weight, with a sign, to one of ``dims`` columns chosen by a stable hash of the term
(so no vocabulary is stored and two unrelated terms sharing a column cancel on average);
the row is then L2-normalised, so the dot product of two items is about their TF-IDF
cosine. Document frequencies are counted per hash bucket (:data:`DF_BUCKETS` of them,
so few terms share one); a term never seen while fitting counts as in no text.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

WORD = re.compile(r"\w+")
DF_BUCKETS = 1 << 20  # about 150,000 distinct terms on Scientific: few share a bucket
ENCODE_CHUNK = 4096  # texts per pass when filling the catalogue's table


def terms_of(text: str | None) -> Counter[str]:
    """Each lower-cased word and pair of adjacent words of ``text`` with its count."""
    words = WORD.findall((text or "").lower())
    return Counter(words + [f"{a} {b}" for a, b in zip(words, words[1:])])


def term_hash(term: str) -> int:
    """A 64-bit hash of ``term``, the same in every process (Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=8).digest(), "little")


def _hashes(terms: Counter[str]) -> np.ndarray:
    """The terms' hashes, in the order of ``terms``."""
    return np.fromiter((term_hash(t) for t in terms), dtype=np.uint64, count=len(terms))


class TermVectors(nn.Module):
    """Hashed TF-IDF vectors ``[n, dims]`` of item texts, and the catalogue's table of them.

    Buffers saved with the weights: ``df`` ``[DF_BUCKETS]``, the fitted document frequency
    per hash bucket; ``documents``, how many texts it was fitted on. Not saved: ``table``
    ``[num_items + 1, dims]`` float16, the catalogue's vectors by item id (row 0, padding,
    zero), so ranking reads them like any cached feature. It is a function of the texts and
    the frequencies, so it is made again from the catalogue's texts where the catalogue is
    embedded (:meth:`fill`), and a served run carries the vectors once, in its index.
    :meth:`fit` sets all three.
    """

    def __init__(self, num_items: int, dims: int) -> None:
        super().__init__()
        self.dims = dims
        self.num_items = num_items
        self.register_buffer("df", torch.zeros(DF_BUCKETS, dtype=torch.int32))
        self.register_buffer("documents", torch.tensor(0, dtype=torch.long))
        self.register_buffer("table", None, persistent=False)  # made by fit or fill

    @property
    def fitted(self) -> bool:
        return int(self.documents) > 0

    @torch.no_grad()
    def fit(self, texts: Sequence[str | None]) -> None:
        """Count document frequencies over the catalogue's texts (item ids 1..N in order) and
        fill :attr:`table` with their vectors; two passes of :data:`ENCODE_CHUNK` texts, so
        memory does not grow with the catalogue."""
        self._require_catalogue(texts)
        df = np.zeros(DF_BUCKETS, dtype=np.int64)
        for start in range(0, len(texts), ENCODE_CHUNK):
            hashes = [_hashes(terms_of(text)) for text in texts[start : start + ENCODE_CHUNK]]
            buckets = np.concatenate([h % DF_BUCKETS for h in hashes] or [np.zeros(0, np.uint64)])
            df += np.bincount(buckets.astype(np.int64), minlength=DF_BUCKETS)
        self.df.copy_(torch.from_numpy(df.astype(np.int32)))
        self.documents.fill_(len(texts))
        self.fill(texts)

    @torch.no_grad()
    def fill(self, texts: Sequence[str | None]) -> None:
        """Make :attr:`table` from the catalogue's texts (item ids 1..N in order) with the
        fitted frequencies: the same float16 rows :meth:`fit` made."""
        self._require_catalogue(texts)
        table = torch.zeros(len(texts) + 1, self.dims, dtype=torch.float16, device=self.df.device)
        for start in range(0, len(texts), ENCODE_CHUNK):
            rows = self.embed(texts[start : start + ENCODE_CHUNK])
            table[1 + start : 1 + start + len(rows)] = rows.to(table.dtype)
        self.table = table

    def _require_catalogue(self, texts: Sequence[str | None]) -> None:
        if len(texts) != self.num_items:
            raise ValueError(f"{len(texts)} texts for a catalogue of {self.num_items} items")

    def embed(self, texts: Iterable[str | None]) -> torch.Tensor:
        """``[n, dims]`` float32: the vectors of new texts, with the fitted frequencies."""
        if not self.fitted:
            raise RuntimeError("TermVectors.embed before fit: the document frequencies are not known")
        return self._vectors([terms_of(text) for text in texts])

    def of(self, features) -> torch.Tensor:
        """The vectors of an :class:`~iisan.models.inputs.ItemFeatures` batch: the catalogue's
        table, or ``features.terms`` for items added after training, which must carry them."""
        if features.terms is not None:
            return features.terms
        if bool((features.ids > self.num_items).any()):
            raise ValueError("items added after training need their texts' term vectors "
                             "(ItemFeatures.terms, from TermVectors.embed)")
        return self(features.ids)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The catalogue's vectors of ``ids`` (float32); ids beyond the table are zero rows
        (items added after training carry their own, see :meth:`embed`)."""
        if self.table is None:
            raise RuntimeError("TermVectors: the catalogue's table is not made: fill(texts) first")
        known = ids < len(self.table)
        rows = self.table[ids.clamp(max=len(self.table) - 1)].float()
        return rows * known.unsqueeze(-1).to(rows.dtype)

    def _vectors(self, counted: list[Counter[str]]) -> torch.Tensor:
        out = np.zeros((len(counted), self.dims), dtype=np.float64)
        df = self.df.cpu().numpy()
        n = int(self.documents)
        for row, terms in enumerate(counted):
            if not terms:
                continue
            hashed = _hashes(terms)
            tf = np.fromiter(terms.values(), dtype=np.float64, count=len(terms))
            idf = np.log((1 + n) / (1 + df[(hashed % DF_BUCKETS).astype(np.int64)])) + 1
            column = ((hashed >> np.uint64(20)) % np.uint64(self.dims)).astype(np.int64)
            sign = np.where((hashed >> np.uint64(63)) == 1, -1.0, 1.0)
            np.add.at(out[row], column, sign * (1 + np.log(tf)) * idf)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return torch.from_numpy(out / np.where(norms > 0, norms, 1.0)).float()



def fill_tables(module: nn.Module, texts: Sequence[str | None]) -> int:
    """Make the catalogue table of every fitted :class:`TermVectors` in ``module`` from the
    catalogue's texts (item ids 1..N in order), after its weights were loaded; how many."""
    filled = 0
    for part in module.modules():
        if isinstance(part, TermVectors) and part.fitted:
            part.fill(texts)
            filled += 1
    return filled
