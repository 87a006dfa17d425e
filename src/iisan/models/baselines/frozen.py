"""``frozen``: the encoders' cached last layer through a linear head; no side network.

The bar a side network must clear: it shows what adapting the intermediate layers adds
over using the pretrained features as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from iisan.models.inputs import ItemFeatures
from iisan.models.fusion import heads_and_fusion


class FrozenFeatureItemEncoder(nn.Module):
    """``Linear(D, d)`` per modality on the last cached layer, fused by ``Linear(k * d, d)``."""

    def __init__(self, modalities: tuple[str, ...], shapes: dict[str, tuple[int, int]], dim: int) -> None:
        super().__init__()
        self.layers = {m: (shapes[m][0] - 1,) for m in modalities}  # the last layer: always cached
        self.heads = nn.ModuleDict({m: nn.Linear(shapes[m][1], dim) for m in modalities})
        self.fusion = nn.Linear(len(modalities) * dim, dim)

    def side_parameters(self) -> list[nn.Parameter]:
        return []

    def forward(self, features: ItemFeatures) -> torch.Tensor:
        states = {name: features.states[name][:, -1] for name in self.heads}
        return heads_and_fusion(self.heads, self.fusion, states, features.present)


def build_tower(config, context) -> FrozenFeatureItemEncoder:
    """The ``frozen`` entry of the method registry (:mod:`iisan.methods`)."""
    modalities = tuple(m for m in config.side.encoder_modalities if m in context.shapes)
    return FrozenFeatureItemEncoder(modalities, context.shapes, config.user.dim)
