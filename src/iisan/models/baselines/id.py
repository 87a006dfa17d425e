"""``id``: SASRec with learned item-id embeddings, the bar every content-based method must clear."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from iisan.models.inputs import ItemFeatures
from iisan.models.user import VARIANTS


class IdItemEncoder(nn.Module):
    def __init__(self, num_items: int, dim: int, init: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.layers: dict[str, tuple[int, ...]] = {}
        self.embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)  # id 0 is padding
        init(self.embedding.weight)  # as the user encoder's variant initialises its own
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def side_parameters(self) -> list[nn.Parameter]:
        return []

    def forward(self, features: ItemFeatures) -> torch.Tensor:
        return self.embedding(features.ids)


def build_tower(config, context) -> IdItemEncoder:
    """The ``id`` entry of the method registry (:mod:`iisan.methods`)."""
    return IdItemEncoder(context.num_items, config.user.dim, VARIANTS[config.user.variant].init)
