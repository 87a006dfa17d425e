"""The full item vectors stay on disk (issue 45): the index reads a trained catalogue's rows
from its safetensors file through a memory map, and items added later after them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from iisan.errors import DatasetError
from iisan.item_rows import ItemRows, map_safetensors
from iisan.serving.recommender import Recommender


def test_a_mapped_matrix_reads_as_the_saved_one_without_loading_it(tmp_path):
    rows = np.random.default_rng(0).normal(size=(50, 7)).astype(np.float32)
    save_file({"embeddings": rows, "other": np.zeros(3, np.float32)}, str(tmp_path / "e.safetensors"))
    mapped = map_safetensors(tmp_path / "e.safetensors", "embeddings", "rebuild it")
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, rows)


@pytest.mark.parametrize("damage", ["cut", "header", "dtype", "missing"])
def test_a_damaged_file_is_one_clear_error(tmp_path, damage):
    path = tmp_path / "e.safetensors"
    rows = np.ones((20, 4), np.float32)
    save_file({"embeddings": rows.astype(np.float64) if damage == "dtype" else rows}, str(path))
    data = path.read_bytes()
    if damage == "cut":
        path.write_bytes(data[:-40])
    elif damage == "header":
        path.write_bytes(b"\xff" * 8 + data[8:])
    name = "nothing" if damage == "missing" else "embeddings"
    with pytest.raises(DatasetError, match="not a readable safetensors matrix.*rebuild it"):
        map_safetensors(path, name, "rebuild it")


def test_rows_are_read_by_id_across_the_trained_and_the_added():
    base, extra = np.arange(12, dtype=np.float32).reshape(4, 3), np.full((2, 3), -1, np.float32)
    rows = ItemRows(base, extra)
    assert len(rows) == 6 and rows.shape == (6, 3)
    assert rows.gather(np.array([[3, 4], [0, 5]])).tolist() == [[[9, 10, 11], [-1, -1, -1]], [[0, 1, 2], [-1, -1, -1]]]
    assert torch.equal(rows[torch.tensor([1, 2])], torch.from_numpy(base[1:3]))
    grown = rows.appended(np.zeros((1, 3), np.float32))
    assert len(grown) == 7 and len(rows) == 6 and grown.base is base  # the trained rows are shared, not copied


def test_each_query_scores_its_own_rows_from_the_map_and_the_added(tmp_path):
    rng = np.random.default_rng(1)
    base, extra = rng.normal(size=(30, 9)).astype(np.float32), rng.normal(size=(4, 9)).astype(np.float32)
    save_file({"embeddings": base}, str(tmp_path / "e.safetensors"))
    rows = ItemRows(map_safetensors(tmp_path / "e.safetensors", "embeddings", "rebuild it"), extra)
    queries = rng.normal(size=(3, 9)).astype(np.float32)
    ids = np.array([[0, 5, 29, 31], [33, 30, 1, 1], [7, 8, 9, 32]])  # 30..33: added after training
    expected = np.einsum("qmd,qd->qm", np.concatenate([base, extra])[ids], queries)
    assert np.allclose(rows.dot(ids, queries), expected, atol=1e-5)


def test_a_served_run_keeps_its_trained_vectors_on_disk(tiny_run):
    recommender = Recommender.load(tiny_run)
    stored = recommender.store.current.stored
    assert isinstance(stored.embeddings.base, np.memmap)
    assert recommender.recommend(recommender.keys[1:3], k=3)
