"""IISAN-Versa: group layer-dropping and the dimension transformation layer."""

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
from iisan.models.iisan import IISANItemEncoder
from iisan.models.versa import alignment_matrix, layer_groups
from iisan.training.step import build_optimizer, training_step
from iisan.training.loop import train
from iisan.training.loss import log_popularity


def paper_side(**changes) -> SideNetworkConfig:
    """The paper's side network (LayerDrop: every other layer), which these tests spell out."""
    return SideNetworkConfig(**{"layer_rule": "every_other", **changes})


@pytest.mark.parametrize("deep, steps", [(7, 4), (13, 7), (5, 2), (6, 6), (9, 1), (4, 3)])
def test_groups_are_contiguous_near_equal_and_cover_every_layer(deep, steps):
    groups = layer_groups(deep, steps)
    assert len(groups) == steps
    assert [i for g in groups for i in g] == list(range(deep))  # contiguous, in order, all once
    sizes = [len(g) for g in groups]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes)


def test_minilm_with_dinov2_small_pairs_first_and_last_layers():
    # Default LayerDrop: minilm (6 layers) selects 0,2,4,6; dinov2-small (12) selects 0,2,...,12.
    groups = layer_groups(7, 4)
    assert groups == [(0,), (1, 2), (3, 4), (5, 6)]
    dinov2_layers = select_layers(paper_side(), 13)
    assert [dinov2_layers[g[-1]] for g in groups] == [0, 4, 8, 12]


def test_alignment_weights_for_each_option():
    last, mean, truncate = (alignment_matrix(7, 4, option) for option in ("last", "mean", "truncate"))
    assert last.argmax(1).tolist() == [0, 2, 4, 6] and torch.all(last.sum(1) == 1)
    assert torch.allclose(mean[1], torch.tensor([0, 0.5, 0.5, 0, 0, 0, 0]))
    assert truncate.argmax(1).tolist() == [0, 1, 2, 3]
    for option in ("last", "mean", "truncate"):
        assert torch.equal(alignment_matrix(5, 5, option), torch.eye(5))  # equal depth: IISAN's LayerDrop
    with pytest.raises(ValueError):
        layer_groups(3, 4)


def _features(shapes: dict[str, tuple[int, int]], n: int = 5) -> ItemFeatures:
    torch.manual_seed(1)
    return ItemFeatures(ids=torch.arange(1, n + 1),
                        states={m: torch.randn(n, depth, width) for m, (depth, width) in shapes.items()},
                        present={m: torch.ones(n, dtype=torch.bool) for m in shapes})


def test_symmetric_encoders_reduce_exactly_to_iisan():
    shapes = {"text": (7, 16), "image": (7, 16)}  # 4 selected layers each
    reference = IISANItemEncoder(paper_side(bottleneck=4), shapes, dim=8)
    assert not list(reference.inter_inputs.parameters()) and not list(reference.inter_inputs.buffers())
    features = _features({m: (4, 16) for m in shapes})
    # The inter tower reads the raw selected states, step by step, as in IISAN.
    inter = reference.towers["inter"](features.states["text"], features.states["image"])
    assert torch.equal(reference.inter_inputs(features.states["image"], "image"), features.states["image"])
    expected = reference.fusion(torch.cat([reference.heads["image"](reference.towers["image"](features.states["image"])),
                                           reference.heads["text"](reference.towers["text"](features.states["text"])),
                                           reference.heads["inter"](inter)], dim=-1))
    for inter_layers in ("last", "mean", "truncate"):
        for dtl_to in ("smaller", "larger"):
            variant = IISANItemEncoder(paper_side(bottleneck=4, inter_layers=inter_layers, dtl_to=dtl_to),
                                       shapes, dim=8)
            variant.load_state_dict(reference.state_dict())  # same parameter names and shapes
            assert torch.equal(variant(features), expected)


def test_different_depth_groups_the_deeper_encoder():
    shapes = {"text": (7, 16), "image": (13, 16)}  # 4 vs 7 selected layers
    encoder = IISANItemEncoder(paper_side(bottleneck=4), shapes, dim=8)
    assert len(encoder.towers["inter"].blocks) == 4
    assert len(encoder.towers["image"].blocks) == 7 and len(encoder.towers["text"].blocks) == 4  # intra: own depth
    features = _features({"text": (4, 16), "image": (7, 16)})
    image = features.states["image"]
    assert torch.equal(encoder.inter_inputs(image, "image"), image[:, [0, 2, 4, 6]])
    mean = IISANItemEncoder(paper_side(bottleneck=4, inter_layers="mean"), shapes, dim=8)
    assert torch.allclose(mean.inter_inputs(image, "image")[:, 2], image[:, 3:5].mean(1))
    truncate = IISANItemEncoder(paper_side(bottleneck=4, inter_layers="truncate"), shapes, dim=8)
    assert torch.equal(truncate.inter_inputs(image, "image"), image[:, :4])
    assert encoder(features).shape == (5, 8)
    # Grouping adds no parameters: only the fixed alignment.
    assert sum(p.numel() for p in encoder.parameters()) == sum(p.numel() for p in mean.parameters())


@pytest.mark.parametrize("dtl_to, mapped, width", [("smaller", "image", 16), ("larger", "text", 32)])
def test_different_width_adds_one_linear_map(dtl_to, mapped, width):
    shapes = {"text": (7, 16), "image": (7, 32)}
    encoder = IISANItemEncoder(paper_side(bottleneck=4, dtl_to=dtl_to), shapes, dim=8)
    assert list(encoder.inter_inputs.dtl) == [mapped]
    linear = encoder.inter_inputs.dtl[mapped]
    assert (linear.in_features, linear.out_features) == (shapes[mapped][1], width)
    assert encoder.towers["inter"].blocks[0].down.in_features == width
    assert encoder.towers["text"].blocks[0].down.in_features == 16  # intra towers keep their width
    assert encoder.towers["image"].blocks[0].down.in_features == 32
    assert any(p is linear.weight for p in encoder.side_parameters())  # trained at side_lr
    out = encoder(_features({"text": (4, 16), "image": (4, 32)}))
    out.sum().backward()
    assert linear.weight.grad is not None and linear.weight.grad.abs().sum() > 0


def test_different_depth_and_width_together():
    shapes = {"text": (13, 24), "image": (5, 16)}  # text deeper and wider
    encoder = IISANItemEncoder(paper_side(bottleneck=4, modality="inter"), shapes, dim=8)
    assert encoder.inter_inputs.steps == 3 and encoder.inter_inputs.width == 16
    assert list(encoder.inter_inputs.dtl) == ["text"]
    assert encoder(_features({"text": (7, 24), "image": (3, 16)})).shape == (5, 8)


def test_bad_versa_options_are_config_errors():
    with pytest.raises(ConfigError, match="inter_layers"):
        paper_side(inter_layers="first")
    with pytest.raises(ConfigError, match="dtl_to"):
        paper_side(dtl_to="middle")


def test_asymmetric_cache_cached_equals_uncached(tiny_asymmetric):
    dataset, cache = tiny_asymmetric
    config = TrainConfig.for_method("iisan", epochs=1, train_batch_size=16, seed=3, id_offset=False, side=paper_side())
    cached = assemble(dataset, cache, config)
    uncached = assemble(dataset, cache, dataclasses.replace(config, mode="uncached"))
    inter_inputs = cached.model.item.inter_inputs
    assert (inter_inputs.steps, inter_inputs.width) == (2, 32)  # text 2 layers x 32, image 4 x 48
    assert list(inter_inputs.dtl) == ["image"]
    ids = np.arange(0, cached.dataset.num_items + 1)
    with torch.no_grad():
        a = cached.model.embed_items(cached.source.features(ids))
        b = uncached.model.embed_items(uncached.source.features(ids))
    assert torch.allclose(a, b, atol=2e-3, rtol=1e-2)
    log_pop = log_popularity(torch.from_numpy(cached.splits.popularity))
    batch = cached.splits.train[:16]
    torch.manual_seed(0)
    loss_cached = training_step(cached, build_optimizer(cached), batch, log_pop)
    torch.manual_seed(0)
    loss_uncached = training_step(uncached, build_optimizer(uncached), batch, log_pop)
    assert loss_cached == pytest.approx(loss_uncached, rel=1e-3)


def test_asymmetric_training_run_saves_and_reloads(tiny_asymmetric, tmp_path):
    from iisan.assemble import assemble_run

    dataset, cache = tiny_asymmetric
    config = TrainConfig.for_method("iisan", epochs=2, train_batch_size=32, seed=1, id_offset=False,
                         side=paper_side(inter_layers="mean", dtl_to="larger"))
    summary = train(dataset, tmp_path / "run", config, cache_dir=cache)
    assert summary["epochs"] == 2
    reloaded = assemble_run(tmp_path / "run")
    assert reloaded.config.side.inter_layers == "mean" and reloaded.config.side.dtl_to == "larger"
    assert list(reloaded.model.item.inter_inputs.dtl) == ["text"]


def test_frozen_baseline_reads_asymmetric_encoders(tiny_asymmetric):
    dataset, cache = tiny_asymmetric
    parts = assemble(dataset, cache, TrainConfig(method="frozen", train_batch_size=16, seed=3))
    assert parts.model.layers == {"text": (2,), "image": (4,)}  # each encoder's own last layer
    log_pop = log_popularity(torch.from_numpy(parts.splits.popularity))
    optimizer = build_optimizer(parts)
    losses = [training_step(parts, optimizer, parts.splits.train[:16], log_pop) for _ in range(5)]
    assert losses[-1] < losses[0]
