"""An item tower and a user encoder, put together: the whole sequential recommender."""

from __future__ import annotations

import torch
from torch import nn

from iisan.config import TrainConfig
from iisan.methods import TowerContext, get_method
from iisan.models.features import ItemFeatures
from iisan.models.fusion import ItemTower
from iisan.models.id_offset import ContentWithIdOffset
from iisan.models.user import UserEncoder


def build_item_encoder(config: TrainConfig, shapes: dict[str, tuple[int, int]], num_items: int,
                       constant: dict[str, tuple[int, ...]] | None = None,
                       layers: dict[str, tuple[int, ...]] | None = None,
                       encoders: dict | None = None, poolings: dict[str, str] | None = None,
                       stored: dict[str, tuple[int, ...]] | None = None) -> ItemTower:
    """The item tower of ``config.method``, from its registry entry (:mod:`iisan.methods`);
    ``shapes`` maps modality -> ``(L + 1, D)``; the rest: see :class:`~iisan.methods.TowerContext`.
    Wrapped with per-item id offsets when ``config.id_offset``."""
    context = TowerContext(shapes, num_items, constant, layers, encoders or {}, poolings or {}, stored)
    tower = get_method(config.method).build_tower(config, context)
    return ContentWithIdOffset(tower, num_items, config.user.dim) if config.id_offset else tower


class SequentialRecommender(nn.Module):
    """``item`` maps features to embeddings ``[n, d]``; ``user`` maps a sequence of them to user states.

    Parameter names start with ``item.`` or ``user.``, so filters stay one line.
    """

    def __init__(self, item: ItemTower, user: UserEncoder) -> None:
        super().__init__()
        self.item = item
        self.user = user

    @property
    def dim(self) -> int:
        """The width ``d`` of item embeddings and user states."""
        return self.user.positions.embedding_dim

    @property
    def layers(self) -> dict[str, tuple[int, ...]]:
        """modality -> the encoder layers the item tower reads."""
        return self.item.layers

    def embed_items(self, features: ItemFeatures) -> torch.Tensor:
        """Item embeddings ``[n, d]``; the padding id 0 maps to zeros."""
        embeddings = self.item(features)
        return embeddings * (features.ids != 0).unsqueeze(-1).to(embeddings.dtype)

    @torch.no_grad()
    def user_vectors(self, items: torch.Tensor, inputs) -> torch.Tensor:
        """The user encoder's last-position output ``[U, d]`` for left-padded item ids
        ``inputs [U, L]`` (numpy or torch), reading ``items [N + 1, d]``; one dot product
        with ``items`` scores every item for every user."""
        self.eval()
        ids = torch.as_tensor(inputs).to(items.device)
        return self.user(items[ids], ids != 0)[:, -1]
