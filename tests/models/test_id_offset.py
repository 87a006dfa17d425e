"""The optional per-item offset: zero at the start, trained for known items, absent for new ones."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from iisan.assemble import assemble
from iisan.config import TrainConfig
from iisan.training.step import build_optimizer, training_step
from iisan.training.loss import log_popularity


def test_offset_starts_at_zero_moves_known_items_and_leaves_new_ones_alone(tiny_multimodal):
    dataset, cache = tiny_multimodal
    config = TrainConfig.for_method("iisan", train_batch_size=32, seed=1, id_offset=True)
    parts = assemble(dataset, cache, config)
    plain = assemble(dataset, cache, dataclasses.replace(config, method_options=dataclasses.replace(config.content, id_offset=False)))
    tower = parts.model.item
    ids = np.arange(parts.dataset.num_items + 1)
    features = parts.source.features(ids)
    with torch.no_grad():
        assert torch.allclose(parts.model.embed_items(features), plain.model.embed_items(features))  # same seed
    optimizer = build_optimizer(parts)
    log_pop = log_popularity(torch.from_numpy(parts.splits.popularity))
    batch = parts.splits.train[:32]
    for _ in range(3):
        training_step(parts, optimizer, batch, log_pop)
    moved = tower.offsets.weight.abs().sum(dim=1) > 0
    assert set(np.flatnonzero(moved.numpy())) == set(np.unique(batch[batch > 0]))  # only the batch's items
    # An id past the training catalogue (an item added later) is embedded by content alone.
    new = features.ids.clone()
    new[5] = parts.dataset.num_items + 7
    features.ids = new
    with torch.no_grad():
        out = tower(features)
        assert torch.allclose(out[5], tower.content(features)[5])
