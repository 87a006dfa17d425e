"""A learned per-item offset added to a content tower's embedding (beyond the paper).

An item id model can learn that an item tends to be bought again, or that two items with
near-identical titles (same brand, other size) are not interchangeable; a content
embedding shares its score with every item whose content is close. The offset, one
``d``-vector per item of the training catalogue, starts at zero, so the model begins as
the pure content model and only items seen in training move. Items added later (ids
beyond the training catalogue) get no offset: cold start stays content only.
"""

from __future__ import annotations

import torch
from torch import nn

from iisan.models.inputs import ItemFeatures


class ContentWithIdOffset(nn.Module):
    """``content(features) + offset[id]`` for ids ``1..num_items``; other ids get ``content`` alone."""

    def __init__(self, content: nn.Module, num_items: int, dim: int) -> None:
        super().__init__()
        self.content = content
        self.offsets = nn.Embedding(num_items + 1, dim)
        nn.init.zeros_(self.offsets.weight)

    @property
    def layers(self) -> dict[str, tuple[int, ...]]:
        return self.content.layers

    def side_parameters(self) -> list[nn.Parameter]:
        return self.content.side_parameters()

    def forward(self, features: ItemFeatures) -> torch.Tensor:
        ids = features.ids
        known = (ids > 0) & (ids < self.offsets.num_embeddings)
        offsets = self.offsets(torch.where(known, ids, torch.zeros_like(ids)))
        return self.content(features) + offsets * known.unsqueeze(-1).to(offsets.dtype)
