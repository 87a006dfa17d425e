"""``unisrec``, the content peer: the adaptor's parts, both settings trained end to end in the
same harness, and new items ranked by their text alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from iisan.assemble import assemble
from iisan.config import TrainConfig
from iisan.errors import ConfigError
from iisan.method_options import UnisrecConfig
from iisan.models.baselines.unisrec import TEMPERATURE, MixtureAdaptor, ParametricWhitening
from iisan.serving.recommender import Recommender
from iisan.training.loop import train
from iisan.training.loss import log_popularity
from iisan.training.step import build_optimizer, training_step


def test_a_parametric_whitening_centres_then_projects():
    layer = ParametricWhitening(4, 3, dropout=0.0)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    x = torch.randn(5, 4)
    assert torch.allclose(layer(x), (x - layer.bias) @ layer.projection.weight.T)


def test_the_adaptor_mixes_its_experts_by_a_softmax_gate_noisy_only_while_training():
    torch.manual_seed(0)
    adaptor = MixtureAdaptor(6, 3, experts=4, dropout=0.0)
    with torch.no_grad():
        adaptor.gate.normal_()
        adaptor.noise.normal_()
    x = torch.randn(7, 6)
    adaptor.eval()
    gates = torch.softmax(x @ adaptor.gate, dim=-1)
    expected = sum(gates[:, [k]] * expert(x) for k, expert in enumerate(adaptor.experts))
    assert torch.allclose(adaptor(x), expected, atol=1e-6)
    assert torch.equal(adaptor(x), adaptor(x))  # no noise at evaluation
    adaptor.train()
    assert not torch.allclose(adaptor(x), expected, atol=1e-4)  # the gate's noise while training


@pytest.mark.parametrize("setting", ["transductive", "inductive"])
def test_both_settings_learn_and_score_cosines_over_the_temperature(tiny_multimodal, setting):
    dataset, cache = tiny_multimodal
    config = TrainConfig.for_method("unisrec", epochs=2, seed=1, lr=3e-3,
                                    method_options=UnisrecConfig(unisrec_setting=setting))
    parts = assemble(dataset, cache, config)
    assert (parts.model.item.ids is not None) == (setting == "transductive")
    optimizer = build_optimizer(parts)
    log_pop = log_popularity(torch.from_numpy(parts.splits.popularity))
    batch = parts.splits.train[:32]
    parts.model.train()
    losses = [training_step(parts, optimizer, batch, log_pop) for _ in range(30)]
    assert losses[-1] < losses[0] * 0.8
    parts.model.eval()
    items = parts.model.embed_items(parts.source.features(np.arange(1, 6)))
    assert torch.allclose(items.norm(dim=-1), torch.full((5,), TEMPERATURE ** -0.5), atol=1e-4)


def test_a_unisrec_run_trains_evaluates_and_ranks_new_items_by_their_text(tiny_multimodal, tmp_path):
    dataset, cache = tiny_multimodal
    config = TrainConfig.for_method("unisrec", epochs=2, seed=1, eval_user_chunk=64,
                                    method_options=UnisrecConfig(unisrec_setting="inductive"))
    summary = train(dataset, tmp_path / "run", config, cache_dir=cache)
    assert 0 <= summary["test"]["ndcg@10"] <= 1 and set(summary["test"]["slices"]) == {"cold", "tail", "head"}
    recommender = Recommender.load(tmp_path / "run")
    twin = recommender.trained.items.row(3, named=True)  # a new item with a trained item's text
    recommender.add_items([{"key": "twin", "text": twin["text"]}])
    vectors = recommender.embeddings
    assert torch.allclose(vectors[recommender.ids["twin"]], vectors[twin["item_id"]], atol=1e-5)


def test_unisrec_reads_text_and_its_options_are_its_own(tiny_multimodal):
    with pytest.raises(ConfigError, match="--unisrec-experts is an option of unisrec: --method iisan never reads it"):
        TrainConfig.from_options({"method": "iisan", "unisrec_experts": 4})
    with pytest.raises(ConfigError, match="unisrec_dropout must be in"):
        UnisrecConfig(unisrec_dropout=1.0)
    config = TrainConfig.from_options({"method": "unisrec", "unisrec_experts": 2})
    assert config.method_options.unisrec_experts == 2 and config.loss == "full" and not config.content.blend
    dataset, cache = tiny_multimodal
    image_only = dataclasses.replace(config, side=dataclasses.replace(config.side, modality="image"))
    with pytest.raises(ConfigError, match="unisrec reads the text encoder's states"):
        assemble(dataset, cache, image_only)
