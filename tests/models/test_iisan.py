"""The side network's equations, shapes, and cached == uncached."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from iisan.models.layers import select_layers
from iisan.assemble import assemble
from iisan.config import SideNetworkConfig, TrainConfig
from iisan.errors import ConfigError
from iisan.models.inputs import ItemFeatures
from iisan.models.iisan import GatedTower, IISANItemEncoder
from iisan.models.sanb import SANB
from iisan.training.step import build_optimizer, training_step
from iisan.training.loss import log_popularity


def paper_side(**changes) -> SideNetworkConfig:
    """The paper's side network (LayerDrop: every other layer), which these tests spell out."""
    return SideNetworkConfig(**{"layer_rule": "every_other", **changes})


def test_sanb_starts_near_identity_with_zero_biases():
    torch.manual_seed(0)
    block = SANB(32, 8)
    x = torch.randn(5, 32)
    assert torch.allclose(block(x), x, atol=0.05)
    assert not block.down.bias.any() and not block.up.bias.any()
    assert block.down.weight.std().item() == pytest.approx(1e-2, rel=0.3)


def test_gated_tower_follows_the_equation():
    torch.manual_seed(0)
    config = paper_side(bottleneck=4)
    tower = GatedTower(6, 3, config)
    with torch.no_grad():
        tower.gates.copy_(torch.tensor([0.0, 0.2, -0.1]))
    states = torch.randn(2, 3, 6)
    running = torch.zeros(2, 6)
    for step in range(3):
        gate = torch.sigmoid(tower.gates[step] / 0.1)
        running = tower.blocks[step](gate * states[:, step] + (1 - gate) * running)
    assert torch.allclose(tower(states), running)
    assert torch.sigmoid(torch.tensor(0.0) / 0.1) == 0.5  # gates start balanced


def test_default_layers_are_zero_and_every_other():
    assert select_layers(paper_side(), 7) == (0, 2, 4, 6)
    assert select_layers(paper_side(), 13) == (0, 2, 4, 6, 8, 10, 12)
    assert select_layers(paper_side(layers=(1, 3)), 7) == (1, 3)
    with pytest.raises(ConfigError, match="does not exist"):
        select_layers(paper_side(layers=(9,)), 7)


@pytest.mark.parametrize("modality, towers", [
    ("text", ["text"]), ("image", ["image"]), ("intra", ["image", "text"]),
    ("inter", ["inter"]), ("intra_inter", ["image", "text", "inter"]),
])
def test_every_modality_is_the_same_code_path(modality, towers):
    shapes = {"text": (5, 16), "image": (5, 16)}
    encoder = IISANItemEncoder(paper_side(modality=modality, bottleneck=4), shapes, dim=8)
    assert list(encoder.towers) == towers
    features = ItemFeatures(ids=torch.arange(1, 4),
                            states={m: torch.randn(3, 3, 16) for m in shapes},
                            present={m: torch.tensor([True, False, True]) for m in shapes})
    assert encoder(features).shape == (3, 8)


def test_missing_modality_is_a_clear_error():
    with pytest.raises(ConfigError, match="needs image"):
        IISANItemEncoder(paper_side(modality="intra"), {"text": (7, 16)}, dim=8)


def test_missing_image_gives_zero_image_embedding():
    encoder = IISANItemEncoder(paper_side(modality="image", bottleneck=4), {"image": (3, 8)}, dim=4)
    states = torch.randn(2, 2, 8)
    present = ItemFeatures(ids=torch.tensor([1, 2]), states={"image": states}, present={"image": torch.tensor([True, True])})
    absent = dataclasses.replace(present, present={"image": torch.tensor([False, True])})
    assert torch.allclose(encoder(absent)[0], encoder.fusion.bias)  # only the fusion bias is left
    assert torch.allclose(encoder(absent)[1], encoder(present)[1])


def test_cached_and_uncached_agree(tiny_multimodal):
    dataset, cache = tiny_multimodal
    config = TrainConfig.for_method("iisan", epochs=1, train_batch_size=16, seed=3, id_offset=False, side=paper_side())
    cached = assemble(dataset, cache, config)
    uncached = assemble(dataset, cache, dataclasses.replace(config, mode="uncached"))
    assert all(torch.equal(a, b) for a, b in zip(cached.model.state_dict().values(), uncached.model.state_dict().values()))
    ids = np.arange(0, cached.dataset.num_items + 1)
    with torch.no_grad():
        a = cached.model.embed_items(cached.source.features(ids))
        b = uncached.model.embed_items(uncached.source.features(ids))
    assert torch.allclose(a, b, atol=2e-3, rtol=1e-2)  # the cache stores float16

    log_pop = log_popularity(torch.from_numpy(cached.splits.popularity))
    batch = cached.splits.train[:16]
    torch.manual_seed(0)  # the same dropout masks in both steps
    loss_cached = training_step(cached, build_optimizer(cached), batch, log_pop)
    torch.manual_seed(0)
    frozen_before = {k: v.clone() for k, v in uncached.source.encoders["text"].model.state_dict().items()}
    loss_uncached = training_step(uncached, build_optimizer(uncached), batch, log_pop)
    assert loss_cached == pytest.approx(loss_uncached, rel=1e-3)
    # Nothing back-propagates into the encoders: their weights are bit-identical after a step.
    after = uncached.source.encoders["text"].model.state_dict()
    assert all(torch.equal(frozen_before[k], after[k]) for k in frozen_before)
    side = uncached.model.item.towers["text"].blocks[0].down.weight
    assert side.grad is not None and side.grad.abs().sum() > 0


def test_layer_rules_count_back_from_the_last_layer_and_skip_constant_ones():
    every_other = paper_side(layer_rule="every_other")
    assert select_layers(every_other, 7) == (0, 2, 4, 6)  # the paper's "layer 0 and every other"
    assert select_layers(every_other, 7, constant=(0,)) == (2, 4, 6)
    assert select_layers(every_other, 6) == (1, 3, 5)  # the last layer is always read
    assert select_layers(paper_side(layer_rule="all"), 7, constant=(0,)) == (1, 2, 3, 4, 5, 6)
    assert select_layers(paper_side(layers=(0, 3)), 7, constant=(0,)) == (0, 3)
    with pytest.raises(ConfigError, match="same state for every item"):
        select_layers(paper_side(layer_rule="all"), 2, constant=(0, 1))
    with pytest.raises(ConfigError, match="layer_rule"):
        paper_side(layer_rule="some")
