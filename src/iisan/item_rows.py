"""Every item's full ranking vector, read from the index's file on disk row by row.

A blended run's full vectors are wide (963 floats an item on Scientific's defaults), and a
query reads only a few of them: its history's rows (what the user encoder reads) and, with
a two-stage index, its first stage's candidates. So the trained catalogue's rows stay in
the index generation's safetensors file, memory-mapped: the operating system reads the
pages a query touches and may drop them again under memory pressure, where an array loaded
whole would hold the catalogue resident. Items added after training are few and are kept
in memory after them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch

from iisan.errors import DatasetError

HEADER_LIMIT = 100 << 20  # a safetensors header larger than this is not ours


def map_safetensors(path: Path, name: str, fix: str) -> np.ndarray:
    """The float32 matrix ``name`` of the safetensors file ``path``, memory-mapped read-only.

    Raises:
        DatasetError: the file is not a safetensors file holding that 2-D float32 tensor whole.
    """
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > HEADER_LIMIT:
                raise ValueError(f"a header of {length} bytes")
            header = json.loads(handle.read(length))
        entry = header[name]
        start, end = (int(x) for x in entry["data_offsets"])
        shape = tuple(int(x) for x in entry["shape"])
        if entry["dtype"] != "F32" or len(shape) != 2 or end - start != shape[0] * shape[1] * 4:
            raise ValueError(f"{name} is {entry['dtype']} {list(shape)}, not a float32 matrix")
        if 8 + length + end > path.stat().st_size:
            raise ValueError("the file is cut short")
    except (OSError, ValueError, KeyError, TypeError, struct.error) as err:
        raise DatasetError(f"{path} is not a readable safetensors matrix ({err}); {fix}") from None
    if shape[0] * shape[1] == 0:
        return np.zeros(shape, dtype=np.float32)
    return np.memmap(path, dtype=np.float32, mode="r", offset=8 + length + start, shape=shape)


class ItemRows:
    """Rows ``0..N + A`` of full item vectors: the trained catalogue's ``base`` (row 0 padding;
    a memory map or an array) and the ``extra`` rows of items added since (in memory).

    Read by item ids: :meth:`gather` in numpy, ``rows[ids]`` (a torch index tensor) as a torch
    tensor on :attr:`device`, which is what a ranker's ``user_vectors`` reads.
    """

    def __init__(self, base: np.ndarray, extra: np.ndarray | None = None, device: torch.device | str = "cpu") -> None:
        self.base = base
        self.extra = np.zeros((0, base.shape[1]), dtype=np.float32) if extra is None else extra
        self.device = torch.device(device)

    @property
    def width(self) -> int:
        return self.base.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.width

    def __len__(self) -> int:
        return len(self.base) + len(self.extra)

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """``[*ids.shape, width]`` float32: the rows of ``ids``."""
        ids = np.asarray(ids, dtype=np.int64)
        flat = ids.reshape(-1)
        trained = flat < len(self.base)
        if trained.all():  # the common case: one gather from the map (numpy's fastest here)
            return np.asarray(self.base[flat]).reshape(*ids.shape, self.width)
        out = np.empty((len(flat), self.width), dtype=np.float32)
        out[trained] = self.base[flat[trained]]
        out[~trained] = self.extra[flat[~trained] - len(self.base)]
        return out.reshape(*ids.shape, self.width)

    def dot(self, ids: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """``[q, m]`` float32: each query ``queries [q, width]`` against its rows ``ids [q, m]``.

        faiss reads each row once from the map, where a gather would copy the rows out first
        and read them again (half the time for a first stage's candidates)."""
        import faiss

        ids = np.ascontiguousarray(ids, dtype=np.int64)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        out = np.empty(ids.shape, dtype=np.float32)
        added = ids >= len(self.base)
        trained = np.where(added, -1, ids)  # faiss leaves out negative ids (-inf)
        base = np.ascontiguousarray(self.base, dtype=np.float32)  # a view of the map, not a copy
        faiss.fvec_inner_products_by_idx(faiss.swig_ptr(out), faiss.swig_ptr(queries), faiss.swig_ptr(base),
                                         faiss.swig_ptr(trained), self.width, len(ids), ids.shape[1])
        if added.any():
            rows = added.nonzero()[0]
            out[added] = np.einsum("md,md->m", self.extra[ids[added] - len(self.base)], queries[rows])
        return out

    def __getitem__(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.gather(ids.cpu().numpy())).to(self.device)

    def on(self, device: torch.device | str) -> ItemRows:
        """The same rows, read onto ``device``."""
        return ItemRows(self.base, self.extra, device)

    def appended(self, rows: np.ndarray) -> ItemRows:
        """A new view with ``rows`` after these; this one unchanged (its readers go on)."""
        return ItemRows(self.base, np.concatenate([self.extra, np.asarray(rows, dtype=np.float32)]), self.device)

    def array(self) -> np.ndarray:
        """Every row in memory (a copy of the whole catalogue: for checks and benchmarks)."""
        return np.concatenate([np.asarray(self.base), self.extra])
