"""Feature sources: item ids in, :class:`~iisan.models.inputs.ItemFeatures` out.

``IdOnlySource`` for the ID baseline, ``CachedSource`` reads the hidden-state cache; the
sources that run the frozen encoders on raw content are in :mod:`iisan.features.live`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from iisan.cache.store import HiddenStateCache, release_resident_pages
from iisan.models.inputs import ItemFeatures


class FeatureSource(Protocol):
    def features(self, ids: np.ndarray) -> ItemFeatures: ...


class IdOnlySource:
    """For towers that only need item ids (the ID baseline)."""

    def features(self, ids: np.ndarray) -> ItemFeatures:
        return ItemFeatures(ids=torch.as_tensor(ids, dtype=torch.long))


# A page fault on a file mapping maps the neighbouring cached pages too (Linux's
# fault_around_bytes, 64 KiB by default): one random row read adds that much to RSS.
FAULT_AROUND_BYTES = 64 << 10


class CachedSource:
    """Gathers the needed layers of the needed rows from the memory-mapped cache.

    When the selected layers of the whole catalogue fit in ``in_memory_limit`` bytes as
    float32 (Scientific's 20k items x 4 layers x 384: 125 MB), they are read once and
    every batch is a tensor gather: no per-step file reads or float16 conversion, and
    the full-catalogue loss can embed every item at every step. Otherwise rows are read
    per batch, and whatever the access pattern (a training run's random rows, an
    evaluation's pass over the whole catalogue), at most about ``resident_limit`` bytes
    of the cache stay resident in this process; older pages are handed back to the OS
    page cache.

    The in-memory copy lives on ``device``: on a GPU, batches are gathered there and a
    training step copies only item ids to it, not hidden states.
    """

    def __init__(self, cache: HiddenStateCache, layers: dict[str, tuple[int, ...]],
                 resident_limit: int = 256 << 20, in_memory_limit: int = 1 << 30,
                 device: torch.device | str = "cpu") -> None:
        self.cache = cache
        self.layers = layers
        self.resident_limit = resident_limit
        self._states = {m: cache.states(m) for m in layers}
        self._positions = {m: cache.positions(m, layers[m]) for m in layers}  # where the layers sit in the array
        self._present = {m: torch.from_numpy(cache.present(m)) for m in layers}
        self._touched = 0
        rows = cache.num_items + 1
        needed = sum(rows * len(layers[m]) * self._states[m].shape[2] * 4 for m in layers)
        self._in_memory = None
        self.device = torch.device("cpu")
        if needed <= in_memory_limit:
            self.device = torch.device(device)
            self._in_memory = {m: self._read_all(m).to(self.device) for m in layers}
            self._present = {m: p.to(self.device) for m, p in self._present.items()}

    @property
    def resident(self) -> bool:
        """Whether the selected layers of the whole catalogue are held in memory (on :attr:`device`)."""
        return self._in_memory is not None

    def _read_all(self, modality: str) -> torch.Tensor:
        array = self._states[modality]
        out = torch.empty(array.shape[0], len(self.layers[modality]), array.shape[2])
        step = max(1, self.resident_limit // max(array[0].nbytes, 1))
        for start in range(0, array.shape[0], step):
            out[start : start + step] = torch.from_numpy(np.asarray(array[start : start + step][:, self._positions[modality]]))
            release_resident_pages(array)
        return out

    def features(self, ids: np.ndarray) -> ItemFeatures:
        ids = np.asarray(ids, dtype=np.int64)
        if self._in_memory is not None:
            index = torch.from_numpy(ids).to(self.device)
            if len(ids) == len(self._present[next(iter(self.layers))]) and (np.diff(ids) == 1).all() and ids[0] == 0:
                # The whole catalogue (the full-catalogue loss, every step): no copy.
                return ItemFeatures(ids=index, states=dict(self._in_memory), present=dict(self._present),
                                    layers=self.layers)
            return ItemFeatures(ids=index, states={m: s[index] for m, s in self._in_memory.items()},
                                present={m: p[index] for m, p in self._present.items()}, layers=self.layers)
        order = np.argsort(ids, kind="stable")  # sorted reads are friendlier to the page cache
        states = {}
        for modality, layers in self.layers.items():
            rows = np.empty((len(ids), len(layers), self._states[modality].shape[2]), dtype=np.float16)
            rows[order] = self._states[modality][ids[order]][:, self._positions[modality]]
            states[modality] = torch.from_numpy(rows).float()
            self._touched += len(ids) * (self._states[modality][0].nbytes + FAULT_AROUND_BYTES)
        if self._touched > self.resident_limit:
            for array in self._states.values():
                release_resident_pages(array)
            self._touched = 0
        tensor_ids = torch.from_numpy(ids)
        return ItemFeatures(ids=tensor_ids, states=states,
                            present={m: p[tensor_ids] for m, p in self._present.items()}, layers=self.layers)
