"""The score blend: one inner product equal to the standardised mix, priors by slice, and a
calibration that reads validation only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from iisan.config import TrainConfig, UserEncoderConfig
from iisan.errors import ConfigError
from iisan.scoring.blend import ScoreBlend
from iisan.models.inputs import ItemFeatures
from iisan.training.loop import train


def _blend(num_items=30, dim=4, width=6, seed=0):
    rng = np.random.default_rng(seed)
    counts = torch.from_numpy(rng.choice([0, 1, 3, 4, 5, 12], size=num_items + 1))
    blend = ScoreBlend({"text": (3, width)}, dim, counts)
    states = torch.from_numpy(rng.normal(size=(num_items + 1, 1, width)).astype(np.float32))
    ids = torch.arange(num_items + 1)
    features = ItemFeatures(ids, {"text": states}, {"text": torch.ones(num_items + 1, dtype=torch.bool)})
    trained = torch.from_numpy(rng.normal(size=(num_items + 1, dim)).astype(np.float32))
    trained[0] = 0
    return blend, blend.item_vectors(trained, features), trained, states[:, -1], counts


def test_priors_follow_the_slices_and_new_items_are_cold():
    blend = ScoreBlend({"text": (2, 3)}, 4, torch.tensor([0, 0, 1, 4, 5, 99]))
    features = blend.prior_features(torch.tensor([0, 1, 2, 3, 4, 5, 6, 1000]))
    assert features[:, :2].tolist() == [[0, 0], [1, 0], [0, 1], [0, 1], [0, 0], [0, 0], [1, 0], [1, 0]]
    assert torch.allclose(features[:, 2], torch.log1p(torch.tensor([0.0, 0, 1, 4, 5, 99, 0, 0])))


def test_the_query_scores_the_standardised_mix_up_to_a_constant_per_user():
    blend, items, trained, content, counts = _blend()
    blend.fit_spread(items)
    rng = np.random.default_rng(1)
    user = torch.from_numpy(rng.normal(size=(5, 4)).astype(np.float32))
    history = torch.from_numpy(rng.normal(size=(5, 6)).astype(np.float32))
    alpha, priors = 0.7, torch.tensor([0.5, 0.2, -0.1])
    scores = blend.query(user, history, alpha=alpha, priors=priors) @ items.T  # [5, N + 1]

    def z(raw):  # standardised over the catalogue (items 1..N), as the module documents
        real = raw[:, 1:].double()
        return (real - real.mean(1, keepdim=True)) / real.std(1, unbiased=False, keepdim=True)

    unit = torch.nn.functional.normalize(content, dim=-1)
    flags = torch.stack([counts == 0, (counts >= 1) & (counts <= 4), torch.log1p(counts.double())], dim=-1)
    flags = flags.double()[1:]
    expected = z(user @ trained.T) + alpha * z(history @ unit.T) + flags @ priors.double()
    difference = scores[:, 1:].double() - expected
    assert torch.allclose(difference, difference[:, :1].expand_as(difference), atol=1e-4)


def _blend_with_terms(num_items=30, width=6, dims=16, seed=0):
    rng = np.random.default_rng(seed)
    blend = ScoreBlend({"text": (3, width)}, 4, torch.zeros(num_items + 1), terms=dims)
    words = ["gauge", "screw", "uxcell", "lead", "pen", "blue", "8mm", "set"]
    blend.terms.fit([" ".join(rng.choice(words, size=3)) for _ in range(num_items)])
    states = torch.from_numpy(rng.normal(size=(num_items + 1, 1, width)).astype(np.float32))
    features = ItemFeatures(torch.arange(num_items + 1), {"text": states},
                            {"text": torch.ones(num_items + 1, dtype=torch.bool)})
    items = blend.item_vectors(torch.zeros(num_items + 1, 4), features)
    blend.fit_spread(items)
    return blend, items, states[:, -1]


def test_with_term_vectors_the_floor_is_the_standardised_sum_of_its_two_cosines():
    blend, items, content = _blend_with_terms()
    rng = np.random.default_rng(1)
    history = torch.from_numpy(rng.normal(size=(5, 6)).astype(np.float32))
    words = torch.from_numpy(rng.normal(size=(5, 16)).astype(np.float32))
    query = blend.query(torch.zeros(5, 4), torch.cat([history, words], dim=-1), alpha=1.0,
                        priors=torch.zeros(3))
    scores = (query @ items.T)[:, 1:].double()

    def z(raw):
        return (raw - raw.mean(1, keepdim=True)) / raw.std(1, unbiased=False, keepdim=True)

    unit = torch.nn.functional.normalize(content, dim=-1)[1:]
    expected = z(z(history @ unit.T) + z(words @ blend.terms.table[1:].float().T)).double()
    assert torch.allclose(scores - scores.mean(1, keepdim=True), expected, atol=1e-4)


def test_items_added_after_training_need_their_term_vectors():
    blend, items, _ = _blend_with_terms()
    new = torch.tensor([31, 32])
    states = torch.ones(2, 1, 6)
    features = ItemFeatures(new, {"text": states}, {"text": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="term vectors"):
        blend.item_vectors(torch.zeros(2, 4), features)
    features.terms = blend.terms.embed(["uxcell gauge", "blue pen"])
    rows = blend.item_vectors(torch.zeros(2, 4), features)
    assert torch.equal(blend.split(rows)[1][:, 6:], features.terms)
    assert blend.prior_features(new)[:, 0].tolist() == [1.0, 1.0]  # and cold


def test_calibration_reads_validation_only_and_never_does_worse(tiny_multimodal, tmp_path, monkeypatch):
    import iisan.scoring.calibrate as calibrate

    dataset, cache = tiny_multimodal
    seen = []
    original = calibrate._score_rows

    def spy(model, items, split, users, include_history):
        seen.append(split)
        return original(model, items, split, users, include_history)

    monkeypatch.setattr(calibrate, "_score_rows", spy)
    summary = train(dataset, tmp_path / "run", TrainConfig(epochs=1, train_batch_size=32, seed=2), cache_dir=cache)
    blend = summary["blend"]
    assert blend["valid_after"] >= blend["valid_before"] and blend["evaluations"] > 1
    valid_targets = summary_split(dataset, "valid").targets.tolist()
    assert len(seen) == 2  # the default whitening, auto, fits the blend both ways
    assert all(split.targets.tolist() == valid_targets for split in seen)
    # Every validation user calibrates here, so the fit is what the final evaluation measures.
    assert blend["users"] == len(seen[0].targets)
    assert summary["valid"]["ndcg@10"] == pytest.approx(blend["valid_after"], abs=1e-6)
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert recorded["blend"] == blend

    # The same run scored without its blend: what calibration started from.
    from iisan.run_metrics import evaluate_run

    plain = evaluate_run(tmp_path / "run", split="valid", unblended=True)
    assert plain["metrics"]["ndcg@10"] == pytest.approx(blend["valid_before"], abs=1e-6)
    assert "valid_unblended" in json.loads((tmp_path / "run" / "metrics.json").read_text())


def test_calibration_refuses_words_that_were_never_fitted(tiny_multimodal, tmp_path):
    """A blend that reads the texts' words fitted before its term vectors would read zero
    words for every item and keep weights fitted on them: refused, naming the step missing."""
    from iisan.assemble import assemble_run
    from iisan.scoring.calibrate import calibrate_blend

    dataset, cache = tiny_multimodal
    train(dataset, tmp_path / "run", TrainConfig(epochs=1, train_batch_size=32, seed=2), cache_dir=cache)
    parts = assemble_run(tmp_path / "run")
    terms = parts.scorer.blend.terms
    assert terms is not None and terms.fitted  # the defaults read the words, fitted as training ends
    terms.documents.fill_(0)
    with pytest.raises(ValueError, match=r"terms.fit\(texts\)"):
        calibrate_blend(parts.scorer, parts.source, parts.dataset.num_items, parts.splits.valid)


def summary_split(dataset, name):
    from iisan.data.dataset import PreparedDataset
    from iisan.data.split import split_sequences

    data = PreparedDataset.load(dataset)
    splits = split_sequences(*data.sequence_arrays(), UserEncoderConfig().max_seq_len, data.num_items)
    return getattr(splits, name)


def test_calibration_subsamples_users_within_its_budget(monkeypatch):
    import iisan.scoring.calibrate as calibrate

    assert calibrate._calibration_users(100, 1000, 0).tolist() == list(range(100))
    monkeypatch.setattr(calibrate, "CALIBRATION_SCORES", 2 * 1000 * 300)
    chosen = calibrate._calibration_users(10_000, 1000, 0)
    assert len(chosen) == 300 and len(set(chosen)) == 300 and chosen.tolist() == sorted(chosen.tolist())
    assert chosen.tolist() == calibrate._calibration_users(10_000, 1000, 0).tolist()  # fixed by the seed


def test_no_blend_trains_the_plain_model(tiny_multimodal, tmp_path):
    from iisan.assemble import load_trained

    dataset, cache = tiny_multimodal
    summary = train(dataset, tmp_path / "run", TrainConfig.for_method("iisan", epochs=1, train_batch_size=32, seed=2, blend=False),
                    cache_dir=cache)
    assert "blend" not in summary
    assert "blend" not in json.loads((tmp_path / "run" / "metrics.json").read_text())
    run = load_trained(tmp_path / "run")
    assert run.scorer is run.model and run.model.catalogue_width == run.model.dim
    assert not (tmp_path / "run" / "scorer").exists()
    from iisan.errors import ConfigError
    from iisan.run_metrics import evaluate_run

    with pytest.raises(ConfigError, match="no calibrated blend"):
        evaluate_run(tmp_path / "run", unblended=True)


def test_the_blend_applies_to_content_methods_only():
    assert TrainConfig(method="id").content.blend is False and TrainConfig(method="knn").content.blend is False
    assert TrainConfig(method="iisan").content.blend and TrainConfig(method="frozen").content.blend


def test_balanced_selection_weighs_each_slice_alike(tiny_multimodal, tmp_path):
    """blend_select="balanced" fits the weights for the mean of NDCG@10 over the cold, tail
    and head slices of the validation targets: what it reports is that mean, measured."""
    dataset, cache = tiny_multimodal
    summary = train(dataset, tmp_path / "run", TrainConfig.for_method("iisan", epochs=1, train_batch_size=32, seed=2,
                                                                          blend_select="balanced"), cache_dir=cache)
    blend = summary["blend"]
    assert blend["select"] == "balanced" and blend["valid_after"] >= blend["valid_before"]
    slices = [s["ndcg@10"] for s in summary["valid"]["slices"].values() if s["users"]]
    assert len(slices) >= 2  # the tiny set has more than one slice, so the mean differs from overall
    assert blend["valid_after"] == pytest.approx(sum(slices) / len(slices), abs=1e-6)
    with pytest.raises(ConfigError, match="blend_select must be one of overall, balanced"):
        TrainConfig.for_method("iisan", blend_select="fair")


def test_each_group_of_users_gets_its_own_weights():
    """Users are grouped by the share of rare items in their history (bounds at quantiles of
    it); a query carries its group's floor weight and priors, and items added after training
    count as rare."""
    blend = ScoreBlend({"text": (2, 3)}, 4, torch.tensor([0, 0, 1, 4, 5, 99, 7]), groups=2)
    histories = torch.tensor([[0, 5, 6], [0, 4, 5], [1, 2, 6], [0, 0, 1], [5, 6, 1000]])  # rare: 1, 2, 3; 1000 is new
    assert blend.rare_share(histories).tolist() == [0.0, 0.0, pytest.approx(2 / 3), 1.0, pytest.approx(1 / 3)]
    assert blend.fit_groups(histories) == 1 and blend.group_bounds.tolist() == [2.0]  # too few users for 2
    assert blend.user_groups(histories).tolist() == [0] * 5
    assert blend.fit_groups(histories, min_users=2) == 2
    assert blend.group_bounds.tolist() == [pytest.approx(1 / 3)]  # the median share
    assert blend.user_groups(histories).tolist() == [0, 0, 1, 1, 1]
    blend.alpha.copy_(torch.tensor([0.0, 2.0]))
    blend.priors.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.5, -0.1]]))
    query = blend.query(torch.ones(5, 4), torch.ones(5, 3), blend.user_groups(histories))
    assert (query[:2, 4:7] == 0).all() and (query[2:, 4:7] != 0).all()
    assert query[:2, 7:].abs().sum() == 0 and torch.equal(query[2:, 7:], blend.priors[1].expand(3, -1))


def test_calibration_fits_each_group_from_the_shared_weights(tiny_multimodal, tmp_path, monkeypatch):
    """With enough validation users for three groups, calibration moves every group's weights
    together, then each group's on its own: never worse than one set of weights on
    validation; with too few (the tiny set's 150) it keeps one group."""
    import iisan.scoring.blend

    dataset, cache = tiny_multimodal
    summary = train(dataset, tmp_path / "one", TrainConfig(epochs=1, train_batch_size=32, seed=2), cache_dir=cache)
    assert summary["blend"]["groups"]["used"] == 1 and len(summary["blend"]["groups"]["rare_share_bounds"]) == 0
    monkeypatch.setattr(iisan.scoring.blend, "MIN_GROUP_USERS", 40)
    summary = train(dataset, tmp_path / "three", TrainConfig(epochs=1, train_batch_size=32, seed=2), cache_dir=cache)
    blend = summary["blend"]
    assert blend["groups"]["used"] == 3 and sum(blend["groups"]["users"]) == blend["users"]
    assert blend["valid_after"] >= blend["valid_together"] >= blend["valid_before"]


class _StatesSource:
    """A feature source over fixed last-layer states ``[N + 1, D]`` (one modality, text)."""

    def __init__(self, states: torch.Tensor, present: torch.Tensor) -> None:
        self.states, self.present = states, present

    def features(self, ids: np.ndarray) -> ItemFeatures:
        ids = torch.as_tensor(ids)
        return ItemFeatures(ids, {"text": self.states[ids].unsqueeze(1)}, {"text": self.present[ids]})


def test_whitening_makes_the_catalogues_content_isotropic():
    """Fitted on the items that have the modality, the whitened states have mean zero and
    identity covariance there; unfitted (and in runs saved before), the states are only
    normalised, as the floor always did."""
    from iisan.models.baselines.knn import FrozenContentItems

    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(6, 6, generator=generator) * torch.tensor([5.0, 3, 1, 0.5, 0.2, 0.1])
    states = torch.randn(401, 6, generator=generator) @ mixing + 4.0  # anisotropic, off-centre
    present = torch.ones(401, dtype=torch.bool)
    present[[0, 7, 8]] = False
    states[[7, 8]] = 1000.0  # items without the modality: left out of the fit
    source = _StatesSource(states, present)
    content = FrozenContentItems(("text",), {"text": (3, 6)})
    everything = source.features(np.arange(401))
    assert torch.allclose(content(everything)[present], torch.nn.functional.normalize(states[present], dim=-1))
    content.fit_whitening(source, num_items=400, chunk=64)
    whitened = (states[present] - content.mean_text) @ content.whiten_text
    assert torch.allclose(whitened.mean(0), torch.zeros(6), atol=1e-4)
    assert torch.allclose(torch.cov(whitened.T, correction=0), torch.eye(6), atol=1e-3)
    assert torch.allclose(content(everything)[present], torch.nn.functional.normalize(whitened, dim=-1), atol=1e-5)
    assert not content(everything)[~present].any()


def test_a_whitened_blend_is_fitted_after_training_and_saved(tiny_multimodal, tmp_path):
    """--blend-whiten on: the floor's content is whitened on the catalogue before the blend is
    weighed, the saved run holds the fit, and the run loads with it."""
    from iisan.assemble import load_trained

    dataset, cache = tiny_multimodal
    config = TrainConfig.for_method("iisan", epochs=1, train_batch_size=32, seed=2, blend_whiten="on")
    assert train(dataset, tmp_path / "run", config, cache_dir=cache)["blend"]["whitened"] is True
    content = load_trained(tmp_path / "run").scorer.blend.content
    for modality in content.layers:
        mean, matrix = getattr(content, f"mean_{modality}"), getattr(content, f"whiten_{modality}")
        assert mean.abs().sum() > 0 and not torch.equal(matrix, torch.eye(len(mean)))


def test_auto_whitening_keeps_whichever_validation_prefers(tiny_multimodal, tmp_path):
    """--blend-whiten auto (the default) fits the blend both ways and keeps the better on
    validation: the run reports both criteria, scores with the one kept, and saves it."""
    from iisan.assemble import load_trained

    dataset, cache = tiny_multimodal
    assert TrainConfig().score.blend_whiten == "auto"
    both = {}
    for whiten in ("on", "off", "auto"):
        config = TrainConfig.for_method("iisan", epochs=1, train_batch_size=32, seed=2, blend_whiten=whiten)
        both[whiten] = train(dataset, tmp_path / whiten, config, cache_dir=cache)
    auto = both["auto"]["blend"]
    assert auto["valid_whitened"] == both["on"]["blend"]["valid_after"]
    assert auto["valid_unwhitened"] == both["off"]["blend"]["valid_after"]
    kept = "on" if auto["valid_whitened"] > auto["valid_unwhitened"] else "off"
    assert auto["whitened"] is (kept == "on") and auto["alpha"] == both[kept]["blend"]["alpha"]
    assert both["auto"]["test"]["ndcg@10"] == both[kept]["test"]["ndcg@10"]
    content = load_trained(tmp_path / "auto").scorer.blend.content
    assert bool(content.mean_text.abs().sum() > 0) is (kept == "on")


def test_the_criterion_scores_only_reachable_users_and_equals_scoring_everyone(monkeypatch):
    """Calibration skips users whose target cannot reach the top 10 under any weights of the
    grids; its criterion must still be exactly what ranking every user gives."""
    import itertools

    from iisan.evaluation.metrics import metrics_from_ranks, pessimistic_ranks
    from iisan.scoring import calibrate

    rng = np.random.default_rng(3)
    users, items = 240, 120
    trained = torch.from_numpy(rng.normal(size=(users, items + 1)).astype(np.float32))
    floor = torch.from_numpy(rng.normal(size=(users, items + 1)).astype(np.float32))
    trained[:80], floor[:80] = trained[:80].round(), floor[:80].round()  # many exact ties
    targets = torch.from_numpy(rng.integers(1, items + 1, size=users))
    trained[:, 0] = -torch.inf
    trained[torch.arange(0, users, 7), targets[::7]] = -torch.inf  # targets in the history: misses
    trained[torch.arange(users)[:, None], torch.from_numpy(rng.integers(1, items + 1, (users, 5)))] = -torch.inf
    counts = torch.from_numpy(rng.choice([0, 1, 2, 4, 9, 40], size=items + 1))
    features = torch.stack([counts == 0, (counts >= 1) & (counts <= 4), torch.log1p(counts.double())], -1).float()
    features[0] = 0
    members = [np.arange(0, 80), np.arange(80, 170), np.arange(170, 240)]
    judged = [torch.from_numpy(rng.random(users) < share) for share in (0.3, 0.6, 1.0)]
    chunks = [slice(0, 100), slice(100, 240)]
    monkeypatch.setattr(calibrate, "BLOCK_USERS", 7)  # several blocks of users per group
    criterion = calibrate._Criterion([trained[c] for c in chunks], [floor[c] for c in chunks],
                                     [targets[c] for c in chunks], features, members, judged)
    scored = sum(len(positions) for positions in criterion.positions)
    assert 0 < scored < users  # the test exercises both kinds of user
    undecided = sum(block.items.shape[0] * block.items.shape[1] for blocks in criterion.undecided for block in blocks)
    assert undecided < scored * (items + 1)  # and items decided without scoring them

    def everyone(setting):
        ranks = torch.empty(users, dtype=torch.long)
        for group, weights in enumerate(setting):
            rows = members[group]
            scores = trained[rows] + weights[0] * floor[rows] + features @ torch.tensor(weights[1:])
            ranks[rows] = pessimistic_ranks(scores, targets[rows])
        return float(np.mean([metrics_from_ranks(ranks[mask], (10,))["ndcg@10"] for mask in judged]))

    corners = list(itertools.product(*((min(grid), max(grid)) for grid in calibrate.GRIDS)))
    for _ in range(60):
        setting = tuple(tuple(float(rng.choice(grid)) for grid in calibrate.GRIDS) for _ in members)
        assert criterion(setting) == everyone(setting)
    for corner in corners:  # the box's corners, where the bounds are tight
        assert criterion((corner,) * 3) == everyone((corner,) * 3)
