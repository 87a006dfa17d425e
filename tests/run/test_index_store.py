"""ItemIndex: exact and HNSW search, exclusions, storage."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest

from iisan.errors import ConfigError, DatasetError
from iisan.run.index_store import StoredIndex, load_index, save_index, weights_digest
from iisan.search import HnswSettings, ItemIndex, column_scale


def _embeddings(n: int = 500, d: int = 16, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n + 1, d)).astype(np.float32)
    rows[0] = 0  # padding
    return rows


def _exact(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ embeddings[1:].T), axis=1)[:, :k] + 1


def test_flat_index_is_exact_and_returns_item_ids():
    embeddings = _embeddings()
    queries = np.random.default_rng(1).standard_normal((20, 16)).astype(np.float32)
    ids, scores = ItemIndex(embeddings).search(queries, 10)
    assert np.array_equal(ids, _exact(embeddings, queries, 10))
    assert np.allclose(scores, np.take_along_axis(queries @ embeddings.T, ids, axis=1), atol=1e-4)
    assert (ids > 0).all()  # padding is never returned


def test_exclusions_never_appear_and_rows_are_refilled():
    embeddings = _embeddings()
    queries = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
    top = _exact(embeddings, queries, 15)
    exclude = [set(top[0, :5].tolist()), set(), set(top[2, [0, 2]].tolist())]
    ids, _ = ItemIndex(embeddings).search(queries, 10, exclude)
    assert ids[0].tolist() == top[0, 5:15].tolist()
    assert ids[1].tolist() == top[1, :10].tolist()
    assert ids[2].tolist() == [top[2, i] for i in (1, 3, 4, 5, 6, 7, 8, 9, 10, 11)]


def test_short_catalogue_pads_with_minus_inf():
    ids, scores = ItemIndex(_embeddings(n=4)).search(np.ones((1, 16), np.float32), 4, [{1}])
    assert ids[0, -1] == 0 and scores[0, -1] == -np.inf and set(ids[0, :3].tolist()) == {2, 3, 4}


def test_hnsw_recall_is_high_on_random_vectors():
    embeddings = _embeddings(n=3000, d=32)
    queries = np.random.default_rng(3).standard_normal((100, 32)).astype(np.float32)
    ids, _ = ItemIndex(embeddings, "hnsw", HnswSettings(m=16, ef_search=64)).search(queries, 10)
    exact = _exact(embeddings, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), exact.tolist())])
    assert recall > 0.9
    with pytest.raises(ConfigError, match="flat, hnsw"):
        ItemIndex(embeddings, "ivf")


def _blend_like(n: int = 3000, d: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Items as a blended run has them, content of one norm plus a popularity column
    (log(1 + count), counts Zipf-distributed), and queries that weigh content most."""
    rng = np.random.default_rng(seed)
    content = rng.standard_normal((n, d))
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    popularity = np.log1p(rng.zipf(1.5, n).clip(max=5000))
    rows = np.vstack([np.zeros((1, d + 1)), np.hstack([2 * content, popularity[:, None]])]).astype(np.float32)
    direction = rng.standard_normal((200, d))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return rows, np.hstack([7 * direction, np.full((200, 1), 0.3)]).astype(np.float32)


def test_hnsw_finds_the_exact_top_k_when_norms_carry_popularity():
    """A graph on inner products links every item to the most popular few and misses most
    of the exact top 10 here (0.72-0.75 with these settings); lifted onto a sphere it finds them."""
    embeddings, queries = _blend_like()
    ids, scores = ItemIndex(embeddings, "hnsw").search(queries, 10)
    exact = _exact(embeddings, queries, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), exact.tolist())]) > 0.95
    # the scores are the items' inner products with the query, as the flat index gives them
    assert np.allclose(scores, np.take_along_axis(queries @ embeddings.T, ids, axis=1), atol=1e-4)


def test_hnsw_shaped_by_its_queries_ignores_the_columns_they_do_not_read():
    """Items whose few columns queries read are outweighed by 120 they do not (a blend whose
    floor weight came out 0): lifted as they are, the graph's neighbours are the unread
    columns' and the search finds 0.45 of the exact top 10; scaled by the queries, 0.99."""
    rng = np.random.default_rng(0)
    read, unread = rng.standard_normal((3000, 8)) * 0.3, rng.standard_normal((3000, 120))
    embeddings = np.vstack([np.zeros((1, 128)), np.hstack([read, unread])]).astype(np.float32)
    queries = np.hstack([rng.standard_normal((400, 8)) * 5, np.zeros((400, 120))]).astype(np.float32)
    sample, queries = queries[:200], queries[200:]
    scale = column_scale(sample)
    assert scale.shape == (128,) and (scale[8:] == scale[8:].min()).all() and scale[8:].min() > 0
    index = ItemIndex(embeddings, "hnsw", HnswSettings(m=16, ef_search=64), scale=scale)
    ids, scores = index.search(queries, 10)
    exact = _exact(embeddings, queries, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), exact.tolist())]) > 0.95
    assert np.allclose(scores, np.take_along_axis(queries @ embeddings.T, ids, axis=1), atol=1e-4)
    grown = index.extended(embeddings[3:4] * 0.5)  # added items are shaped the same way
    assert grown.scale is index.scale and grown.search(queries[:3], 10)[0].shape == (3, 10)
    assert ItemIndex(embeddings, "flat", scale=scale).scale is None  # exact search needs none


def test_a_graph_saved_before_the_lift_is_still_read_and_searched(tmp_path):
    import faiss

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"w")
    base = _embeddings(n=300)
    graph = faiss.IndexHNSWFlat(16, 32, faiss.METRIC_INNER_PRODUCT)  # as the index was built until 2026-12-03
    graph.add(base[1:])
    empty = pl.DataFrame(schema={"item_id": pl.Int64, "key": pl.String, "text": pl.String})
    old = ItemIndex(base, "hnsw", built=graph)
    save_index(tmp_path / "index", StoredIndex(old, base, empty), 300, weights_digest(weights))
    stored = load_index(tmp_path / "index", weights)
    assert not stored.index.lifted and stored.index.graph_dim == 16
    queries = np.random.default_rng(7).standard_normal((20, 16)).astype(np.float32)
    ids, scores = stored.index.search(queries, 5)
    exact = _exact(base, queries, 5)
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids.tolist(), exact.tolist())]) > 0.9
    assert np.allclose(scores, np.take_along_axis(queries @ base.T, ids, axis=1), atol=1e-4)
    grown = stored.index.extended(base[1:3] * 100)  # grows as it was built: no lift, no warning
    assert grown.search(base[1:2] * 100, 1)[0][0, 0] in (301, 302)


def test_items_added_past_the_graphs_radius_are_found_and_reported(caplog):
    base = _embeddings(n=200)
    index = ItemIndex(base, "hnsw")
    assert index.lifted and index.graph_dim == 17
    with caplog.at_level("WARNING", logger="iisan.search"):
        grown = index.extended(np.concatenate([base[5:6] * 0.5, base[7:9] * 100]))
    assert "2 of the 3 items added lie farther out" in caplog.text
    ids, _ = grown.search(base[7:9] * 100, 1)
    assert ids[:, 0].tolist() == [202, 203]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_store_load_and_added_rows_round_trip(tmp_path, kind):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights v1")
    digest = weights_digest(weights)
    base = _embeddings(n=200)
    empty = pl.DataFrame(schema={"item_id": pl.Int64, "key": pl.String, "text": pl.String})
    scale = np.linspace(0.5, 2.0, 16).astype(np.float32)  # an HNSW graph keeps the scale it was shaped by
    first = save_index(tmp_path / "index", StoredIndex(ItemIndex(base, kind, scale=scale), base, empty), 200, digest)
    extra = np.random.default_rng(4).standard_normal((3, 16)).astype(np.float32)
    grown = load_index(tmp_path / "index", weights).index.extended(extra)
    table = pl.DataFrame({"item_id": [201, 202, 203], "key": ["a", "b", "c"], "text": ["x", None, "z"]})
    inode = os.stat(tmp_path / "index" / first / "embeddings.safetensors").st_ino
    second = save_index(tmp_path / "index", StoredIndex(grown, np.concatenate([base, extra]), table,
                                                        base_generation=first), 200, digest)
    assert os.stat(tmp_path / "index" / second / "embeddings.safetensors").st_ino == inode  # linked, not rewritten
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == [second, "index.json"]  # the old one is gone

    stored = load_index(tmp_path / "index", weights)
    assert stored.generation == second
    assert stored.index.kind == kind and stored.index.size == 203
    assert np.array_equal(stored.index.scale, scale) if kind == "hnsw" else stored.index.scale is None
    assert np.array_equal(stored.embeddings.array(), np.concatenate([base, extra]))
    assert stored.added["key"].to_list() == ["a", "b", "c"]
    ids, _ = stored.index.search(extra[1:2] * 100, 1)
    assert ids[0, 0] == 202  # an added row is found under its item id

    weights.write_bytes(b"weights v2")  # retrained: the index no longer matches
    with pytest.raises(DatasetError, match="other weights"):
        load_index(tmp_path / "index", weights)
    assert load_index(tmp_path / "nothing", weights) is None


def test_damaged_index_is_a_clear_error(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"w")
    base = _embeddings(n=10)
    empty = pl.DataFrame(schema={"item_id": pl.Int64, "key": pl.String, "text": pl.String})
    name = save_index(tmp_path / "index", StoredIndex(ItemIndex(base), base, empty), 10, weights_digest(weights))
    (tmp_path / "index" / name / "embeddings.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DatasetError, match="damaged"):
        load_index(tmp_path / "index", weights)


def test_extending_leaves_the_original_index_as_it_was():
    base = _embeddings(n=130)
    for kind in ("flat", "hnsw"):
        index = ItemIndex(base, kind)
        before = index.search(base[5:6], 3)
        grown = index.extended(base[1:4] * 100)  # rows that would win every query
        assert index.size == 130 and grown.size == 133
        assert np.array_equal(index.search(base[5:6], 3)[0], before[0])
        assert set(grown.search(base[1:4] * 100, 1)[0][:, 0]) <= {131, 132, 133}


@pytest.mark.parametrize("n, k", [(128, 1), (1280, 10), (4096, 200), (256, 256)])
def test_blocked_top_k_equals_a_stable_sort(n, k):
    import torch

    from iisan.search import blocked_topk

    torch.manual_seed(n)
    scores = torch.randn(7, n)
    scores[0, :64] = -torch.inf  # excluded items, as the index marks them
    scores[1] = torch.randint(0, 5, (n,)).float()  # many ties: the lowest columns first among equals
    scores[2, [n - 1, n // 2, 3]] = 10.0  # equal best scores inside the k, none at the cut
    scores[3, -k:] = scores[3, :k] = 10.0  # the cut falls inside a run of equal scores
    values, columns = blocked_topk(scores, k)
    expected = torch.sort(scores, dim=1, descending=True, stable=True)
    assert torch.equal(values, expected.values[:, :k])
    assert torch.equal(columns, expected.indices[:, :k])


def test_ties_are_ordered_by_item_id_whatever_k_or_the_batch():
    """The CLI answers one query, the service a batch with the largest k among them: equal
    scores must come out in the same order either way."""
    rows = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    rows[3] *= 50  # item 4 scores far above the rest for a query along it ...
    rows[[40, 7, 250, 180]] = rows[3]  # ... and so do its four copies (ids 41, 8, 251, 181)
    for kind in ("flat", "hnsw"):
        index = ItemIndex(np.concatenate([np.zeros((1, 8), np.float32), rows]), kind)
        query = rows[3:4] * 10
        alone, _ = index.search(query, 5)
        batched, _ = index.search(np.concatenate([rows[:9], query]), 50)
        assert list(alone[0]) == [4, 8, 41, 181, 251], kind
        assert list(batched[-1, :5]) == list(alone[0]), kind


def test_flat_index_grows_by_added_rows_and_stays_exact():
    embeddings = _embeddings(n=130)
    index = ItemIndex(embeddings)
    extra = np.random.default_rng(5).standard_normal((300, 16)).astype(np.float32)
    for start in range(0, 300, 7):  # one small addition after another
        index.add(extra[start:start + 7])
    everything = np.concatenate([embeddings, extra])
    queries = np.random.default_rng(6).standard_normal((5, 16)).astype(np.float32)
    ids, _ = index.search(queries, 12)
    assert index.size == 430 and np.array_equal(ids, _exact(everything, queries, 12))
