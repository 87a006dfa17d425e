"""The served first stage (issue 45): a blended run's index searches narrow vectors and scores
their best candidates again exactly; evaluation measures exactly what is served."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from iisan.config import TrainConfig
from iisan.scoring.compact import CompactStage, served_scores
from iisan.search import ItemIndex
from iisan.two_stage import TwoStageIndex
from iisan.serving.recommender import Recommender
from iisan.training.loop import train


def anisotropic(rows: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -2, width)
    return torch.randn(rows, width, generator=generator, dtype=torch.float64) * scales


def test_at_full_rank_the_first_stage_scores_exactly_and_priors_stay_exact():
    items, queries = anisotropic(301, 9, 0), anisotropic(200, 9, 1)
    items[0] = 0
    stage = CompactStage(9, rank=6, priors=3)
    stage.fit(items, queries)
    exact = queries @ items.T
    assert torch.allclose(stage.queries(queries) @ stage.items(items).T, exact, atol=1e-4)
    assert torch.equal(stage.item_map[6:, 6:], torch.eye(3, dtype=stage.item_map.dtype))


def test_the_map_is_the_best_low_rank_fit_of_the_scores():
    """Eckart-Young on Sq^1/2 Sx^1/2: in mean square over the queries and items it fits, no
    rank-r map does better, and plain principal components of the items do worse when queries
    weigh other directions than the items vary in."""
    items = anisotropic(2001, 12, 2)
    items[0] = 0
    # queries weigh the items' four smallest directions most
    weights = torch.full((12,), 0.01, dtype=torch.float64)
    weights[8:] = 1.0
    queries = torch.randn(1500, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * weights
    rank = 4
    stage = CompactStage(12, rank=rank, priors=0)
    stage.fit(items, queries)
    exact = queries @ items[1:].T
    fitted = ((stage.queries(queries) @ stage.items(items[1:]).T - exact) ** 2).mean()
    values, vectors = torch.linalg.eigh(items[1:].T @ items[1:])
    pca = vectors[:, -rank:]
    plain = (((queries @ pca) @ (items[1:] @ pca).T - exact) ** 2).mean()
    assert fitted < 0.5 * plain


def test_served_scores_keep_the_first_stages_candidates_never_an_excluded_item():
    scores = torch.tensor([[-torch.inf, 5.0, 4.0, 3.0, 2.0, 1.0]])
    item_codes = torch.tensor([[127], [0], [1], [8], [7], [2]], dtype=torch.int8)  # the padding's 127 must not count
    query_codes = torch.tensor([[1]], dtype=torch.int8)
    scores[0, 4] = -torch.inf  # excluded: in the history
    served = served_scores(scores, query_codes, item_codes, 2)
    assert served.tolist() == [[-torch.inf, -torch.inf, -torch.inf, 3.0, -torch.inf, 1.0]]


def test_equal_first_stage_scores_go_to_the_lowest_id_whatever_else_is_searched():
    from iisan.two_stage import EXCLUDED, first_stage_top

    scores = torch.tensor([[5, 7, 7, 7, 1, 7, 0] + [3] * 40], dtype=torch.int32)
    assert first_stage_top(scores, 3).tolist() == [[1, 2, 3]]
    both = first_stage_top(torch.cat([scores, scores.flip(1)]), 3)
    assert both[0].tolist() == [1, 2, 3]
    scores[0, 2] = EXCLUDED
    assert first_stage_top(scores, 4).tolist() == [[1, 3, 5, 0]]
    # the selection equals a full stable sort, block boundaries or not
    rng = np.random.default_rng(2)
    many = torch.from_numpy(rng.integers(-5, 5, size=(7, 301))).int()
    for count in (1, 16, 17, 100, 301):
        order = [sorted(range(301), key=lambda c, r=r: (-int(many[r, c]), c))[:count] for r in range(7)]
        assert first_stage_top(many, count).tolist() == order


def test_int8_codes_score_as_the_narrow_vectors_rank():
    from iisan.two_stage import code_scores, item_codes, query_codes

    rng = np.random.default_rng(5)
    narrow = torch.from_numpy(rng.normal(size=(500, 16)).astype(np.float32)) * torch.logspace(0, -1, 16)
    scale = narrow.abs().amax(0) / 127
    queries = torch.from_numpy(rng.normal(size=(20, 16)).astype(np.float32))
    coded = code_scores(query_codes(queries, scale), item_codes(narrow, scale)).double()
    exact = (queries @ narrow.T).double()
    correlation = [np.corrcoef(a, b)[0, 1] for a, b in zip(coded.numpy(), exact.numpy())]
    assert min(correlation) > 0.999
    assert torch.equal(code_scores(query_codes(queries, scale), item_codes(narrow, scale)),
                       (query_codes(queries, scale).float() @ item_codes(narrow, scale).float().T).long())


def test_the_two_stage_index_answers_the_served_ranking_with_ties_by_id():
    from iisan.scoring.compact import served_scores as served
    from iisan.two_stage import FirstStage, item_codes, query_codes

    rng = np.random.default_rng(4)
    full = rng.normal(size=(201, 10)).astype(np.float32)
    full[0] = 0
    full[7] = full[9]  # a tie on the full score
    narrow_map = rng.normal(size=(10, 4)).astype(np.float32)
    scale = np.abs(full[1:] @ narrow_map).max(0) / 127
    stage = FirstStage(narrow_map, narrow_map, scale.astype(np.float32), candidates=30)
    index = stage.index(full)
    queries = rng.normal(size=(6, 10)).astype(np.float32)
    exclude = [{1, 2}, set(), {9}, set(), set(), {7}]
    ids, scores = index.search(queries, 5, exclude)
    exact = torch.from_numpy(queries @ full.T)
    exact[:, 0] = -torch.inf
    for row, ids_out in enumerate(exclude):
        exact[row, list(ids_out)] = -torch.inf
    expected = served(exact, query_codes(torch.from_numpy(queries @ narrow_map), torch.from_numpy(scale)),
                      item_codes(torch.from_numpy(full @ narrow_map), torch.from_numpy(scale)), 30)
    for row in range(len(queries)):
        finite = torch.isfinite(expected[row])
        order = sorted(zip((-expected[row][finite]).tolist(), torch.nonzero(finite)[:, 0].tolist()))[:5]
        assert ids[row].tolist() == [c for _, c in order]
        assert np.allclose(scores[row], [-s for s, _ in order], atol=1e-5)
    grown = index.extended(full[[5]] * 3)  # an item added later: found by the first stage, scored in full
    assert grown.size == index.size + 1 and index.size == 200
    assert 201 in grown.search(full[[5]] * 3, 3)[0][0]


@pytest.fixture(scope="module")
def compact_run(tiny_multimodal, tmp_path_factory):
    dataset, cache = tiny_multimodal
    run = tmp_path_factory.mktemp("compact") / "run"
    config = TrainConfig.for_method("iisan", epochs=1, train_batch_size=32, seed=3, eval_user_chunk=64,
                                    serve_width=16, candidates=20)
    return run, train(dataset, run, config, cache_dir=cache)


def test_a_default_run_serves_a_narrow_first_stage_and_records_it(compact_run):
    run, summary = compact_run
    report = summary["blend"]["compact"]
    assert report["width"] == 16 and report["candidates"] == 20 and report["full_width"] > 16
    assert json.loads((run / "scorer" / "scorer.json").read_text())["compact"] == {"width": 16}
    assert json.loads((run / "index" / "index.json").read_text())["first_stage"] == {"width": 16, "candidates": 20}
    recommender = Recommender.load(run)
    assert isinstance(recommender.index, TwoStageIndex) and recommender.index.first.dim == 16
    assert TrainConfig().score.serve_width == 128  # by default a byte each: half the bytes of an id run


def test_evaluation_measures_what_is_served(compact_run):
    """The served lists (the index) and the evaluated ranking (the same two stages in bulk)
    agree item for item, and both differ from ranking every item exactly."""
    from iisan.evaluation.metrics import pessimistic_ranks

    run, _ = compact_run
    recommender = Recommender.load(run)
    split, scorer = recommender.parts.splits.test, recommender.parts.scorer
    items = recommender.embeddings
    queries = scorer.user_vectors(items, split.inputs)
    exact = queries @ items.T
    exact[:, 0] = -torch.inf
    rows, cols = split.history_pairs(np.arange(len(split.targets)))
    exact[torch.from_numpy(rows), torch.from_numpy(cols)] = -torch.inf
    served = scorer.served(queries, items, exact.clone())
    assert int(torch.isfinite(served).sum(1).max()) == 20 < int(torch.isfinite(exact).sum(1).min())
    for user in range(0, len(split.targets), 13):
        whole = split.flat[split.history_start[user] : split.history_end[user]]
        history = [recommender.keys[i] for i in whole]
        answer = [recommender.ids[key] for key, _ in recommender.recommend(history, k=10)]
        assert answer == torch.topk(served[user], 10).indices.tolist()
    recorded = json.loads((run / "metrics.json").read_text())["test"]["ndcg@10"]
    ranks = pessimistic_ranks(served, torch.from_numpy(split.targets))
    hit = ranks < 10
    assert recorded == pytest.approx(torch.where(hit, 1 / torch.log2(ranks.double() + 2), 0.0).mean().item())


def test_items_added_later_join_both_stages(compact_run, tmp_path):
    import shutil

    run, _ = compact_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    recommender = Recommender.load(copy)
    row = recommender.parts.dataset.items.row(4, named=True)
    image = (recommender.parts.dataset.root / row["image"]).read_bytes() if row["image"] else None
    recommender.add_items([{"key": "twin", "text": row["text"], "image": image}])
    assert recommender.index.size == recommender.num_items == recommender.trained_items + 1
    reloaded = Recommender.load(copy)
    assert isinstance(reloaded.index, TwoStageIndex) and reloaded.index.size == recommender.num_items
    assert "twin" in [key for key, _ in reloaded.recommend([row["key"]], k=reloaded.num_items, exclude_seen=False)]


def test_serve_width_zero_or_wider_than_the_vectors_serves_them_whole(tiny_run):
    recommender = Recommender.load(tiny_run)  # trained with serve_width 0
    assert isinstance(recommender.index, ItemIndex)
    assert json.loads((tiny_run / "index" / "index.json").read_text())["first_stage"] is None
