"""``knn``, the content-only floor: no parameters, no training, cosines of frozen content."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from iisan.cache.store import HiddenStateCache
from iisan.config import TrainConfig, UserEncoderConfig
from iisan.method_options import ContentConfig, KnnConfig
from iisan.data.dataset import PreparedDataset
from iisan.data.split import split_sequences
from iisan.evaluation.metrics import metrics_from_ranks, pessimistic_ranks
from iisan.models.baselines.knn import RECENCY_DECAY, RecencyMean
from iisan.models.terms import TermVectors
from iisan.training.loop import train


def test_recency_mean_weighs_the_latest_item_most_and_ignores_padding():
    rng = np.random.default_rng(0)
    items = torch.from_numpy(rng.normal(size=(3, 5, 4)).astype(np.float32))
    mask = torch.tensor([[False, False, True, True, True], [True] * 5, [False] * 4 + [True]])
    out = RecencyMean(4, decay=0.5)(items, mask)
    for b in range(3):
        for j in range(5):
            weights = [0.5 ** (j - k) if mask[b, k] else 0.0 for k in range(j + 1)]
            mean = sum(w * items[b, k] for k, w in enumerate(weights))
            if any(weights):
                assert torch.allclose(out[b, j], mean / mean.norm(), atol=1e-6)


def _whitened_by_hand(states: np.ndarray, present: np.ndarray) -> np.ndarray:
    """ZCA whitening fitted on the catalogue's items (ids 1..N) that have the modality."""
    fit = states[1:][present[1:]].astype(np.float64)
    values, vectors = np.linalg.eigh(np.cov(fit.T, bias=True))
    return ((states - fit.mean(0)) @ (vectors / np.sqrt(values.clip(0) + 1e-6)) @ vectors.T).astype(np.float32)


def _floor_by_hand(dataset_dir, cache_dir, split: str, whiten: bool = False, words: int = 0) -> dict[str, float]:
    """The floor's test metrics written out with numpy: per-modality cosines summed (and with
    ``words``, the cosine of the texts' term vectors)."""
    dataset = PreparedDataset.load(dataset_dir)
    cache = HiddenStateCache.open(cache_dir)
    vectors = []
    for modality in ("text", "image"):
        states = np.asarray(cache.states(modality)[:, -1], dtype=np.float32)
        if whiten:
            states = _whitened_by_hand(states, np.asarray(cache.present(modality), dtype=bool))
        states /= np.maximum(np.linalg.norm(states, axis=1, keepdims=True), 1e-12)
        vectors.append(states * cache.present(modality)[:, None])
    if words:
        terms = TermVectors(dataset.num_items, words)
        terms.fit(dataset.items["text"].to_list())
        vectors.append(terms.table.float().numpy())
    items = np.concatenate(vectors, axis=1)
    items[0] = 0
    flat, offsets = dataset.sequence_arrays()
    splits = split_sequences(flat, offsets, UserEncoderConfig().max_seq_len, dataset.num_items)
    target = getattr(splits, split)
    users = np.zeros((len(target.targets), items.shape[1]), dtype=np.float32)
    for j in range(target.inputs.shape[1]):  # the last input weighs 1, the one before RECENCY_DECAY, ...
        users += RECENCY_DECAY ** (target.inputs.shape[1] - 1 - j) * items[target.inputs[:, j]]
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    scores = torch.from_numpy(users @ items.T)
    scores[:, 0] = -torch.inf
    rows, cols = target.history_pairs(np.arange(len(target.targets)))
    scores[torch.from_numpy(rows), torch.from_numpy(cols)] = -torch.inf
    return metrics_from_ranks(pessimistic_ranks(scores, torch.from_numpy(target.targets)), (5, 10, 20))


def test_a_knn_run_trains_nothing_and_scores_cosines(tiny_multimodal, tmp_path):
    dataset, cache = tiny_multimodal
    summary = train(dataset, tmp_path / "knn", TrainConfig(method="knn"), cache_dir=cache)
    assert summary["epochs"] == 0 and summary["trainable_parameters"] == 0
    log = tmp_path / "knn" / "metrics.jsonl"
    assert not log.exists() or not log.read_text()  # no epoch
    expected = _floor_by_hand(dataset, cache, "test")
    for key, value in expected.items():
        assert summary["test"][key] == pytest.approx(value, abs=1e-6), key
    assert set(summary["test"]["slices"]) == {"cold", "tail", "head"}
    assert json.loads((tmp_path / "knn" / "config.json").read_text())["train"]["method"] == "knn"


def test_a_whitened_knn_run_scores_cosines_of_whitened_content(tiny_multimodal, tmp_path):
    """--knn-whiten: the catalogue's mean removed and its covariance made the identity per
    modality before the cosine; fitted once, saved with the run (the default stays plain)."""
    from iisan.assemble import load_trained

    dataset, cache = tiny_multimodal
    summary = train(dataset, tmp_path / "knn", TrainConfig(method="knn", method_options=KnnConfig(knn_whiten="on")),
                    cache_dir=cache)
    whitened, plain = _floor_by_hand(dataset, cache, "test", whiten=True), _floor_by_hand(dataset, cache, "test")
    assert whitened != plain  # the tiny set's content is anisotropic enough to reorder items
    for key, value in whitened.items():
        assert summary["test"][key] == pytest.approx(value, abs=1e-6), key
    assert load_trained(tmp_path / "knn").model.item.mean_text.abs().sum() > 0  # the fit was saved
    assert TrainConfig(method="knn").method_options.knn_whiten == "off"
    assert TrainConfig(method="iisan").method_options == ContentConfig()


def test_knn_whiten_auto_keeps_the_way_validation_prefers(tiny_multimodal, tmp_path):
    """auto: fitted both ways through choose_whitening, the one --blend-whiten uses; the run
    scores as the kept way does."""
    dataset, cache = tiny_multimodal
    runs = {way: train(dataset, tmp_path / way, TrainConfig(method="knn", method_options=KnnConfig(knn_whiten=way)),
                       cache_dir=cache) for way in ("on", "off", "auto")}
    better = max(("on", "off"), key=lambda way: (runs[way]["valid"]["ndcg@10"], way == "off"))  # a tie: as it is
    assert runs["auto"]["test"]["ndcg@10"] == pytest.approx(runs[better]["test"]["ndcg@10"], abs=1e-6)
    assert runs["auto"]["valid"]["ndcg@10"] == pytest.approx(max(runs[w]["valid"]["ndcg@10"] for w in ("on", "off")))


def test_a_knn_run_with_words_adds_their_cosine(tiny_multimodal, tmp_path):
    """--knn-terms: each item's term vector follows its frozen states, so the score adds the
    cosine of the words; fitted on the catalogue's texts, saved, and given to new items."""
    from iisan.assemble import load_trained
    from iisan.serving.recommender import Recommender

    dataset, cache = tiny_multimodal
    summary = train(dataset, tmp_path / "knn", TrainConfig(method="knn", method_options=KnnConfig(knn_terms=64)),
                    cache_dir=cache)
    with_words = _floor_by_hand(dataset, cache, "test", words=64)
    assert with_words != _floor_by_hand(dataset, cache, "test")
    for key, value in with_words.items():
        assert summary["test"][key] == pytest.approx(value, abs=1e-5), key
    assert load_trained(tmp_path / "knn").model.item.terms.fitted  # saved with the run
    recommender = Recommender.load(tmp_path / "knn")
    text = PreparedDataset.load(dataset).items["text"][0]
    recommender.add_items([{"key": "new", "text": text}])
    assert recommender.embeddings[-1][-64:].abs().sum() > 0
    assert torch.allclose(recommender.embeddings[-1][-64:], recommender.embeddings[1][-64:], atol=2e-3)
    assert TrainConfig(method="knn").method_options.knn_terms == 0


def test_a_knn_run_recommends_like_any_run(tiny_multimodal, tmp_path):
    from iisan.serving.recommender import Recommender

    dataset, cache = tiny_multimodal
    train(dataset, tmp_path / "knn", TrainConfig(method="knn", side=TrainConfig().side), cache_dir=cache)
    recommender = Recommender.load(tmp_path / "knn")
    keys = PreparedDataset.load(dataset).items["key"].to_list()
    top = recommender.recommend(keys[:3], k=5)
    assert len(top) == 5 and not set(keys[:3]) & {key for key, _ in top}
