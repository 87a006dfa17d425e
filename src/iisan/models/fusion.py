"""What every content item tower shares: the interface, and heads + absent-image mask + fusion."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from iisan.models.inputs import ItemFeatures


class ItemTower(Protocol):
    """An item tower: :class:`ItemFeatures` of ``n`` items in, embeddings ``[n, d]`` out.

    Attributes:
        layers: modality -> the encoder layers it reads (empty for ids only).
    """

    layers: dict[str, tuple[int, ...]]

    def side_parameters(self) -> list[nn.Parameter]:
        """The parameters trained at ``side_lr`` (the side network, or trained encoder weights)."""

    def __call__(self, features: ItemFeatures) -> torch.Tensor: ...


def heads_and_fusion(heads: nn.ModuleDict, fusion: nn.Linear, states: dict[str, torch.Tensor],
                     present: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each modality's state ``[n, D_m]`` through its head to ``[n, d]``, then one linear map of
    their concatenation (in ``states``' order) to ``[n, d]``.

    An item without an image gets a zero image embedding: an explicit "absent", the same for
    every such item, rather than whatever the encoder made of a blank input.
    """
    outputs = []
    for name, state in states.items():
        embedding = heads[name](state)
        if name == "image" and "image" in present:
            embedding = embedding * present["image"].unsqueeze(-1).to(embedding.dtype)
        outputs.append(embedding)
    return fusion(torch.cat(outputs, dim=-1))
