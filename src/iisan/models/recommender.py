"""An item tower and a user encoder, put together: the whole sequential recommender."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from iisan.config import TrainConfig
from iisan.methods import TowerContext, get_method
from iisan.models.blend import ScoreBlend
from iisan.models.inputs import ItemFeatures
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
    Wrapped with per-item id offsets when ``config.content.id_offset``."""
    context = TowerContext(shapes, num_items, constant, layers, encoders or {}, poolings or {}, stored)
    tower = get_method(config.method).build_tower(config, context)
    return ContentWithIdOffset(tower, num_items, config.user.dim) if config.content.id_offset else tower


def build_blend(config: TrainConfig, shapes: dict[str, tuple[int, int]], num_items: int) -> ScoreBlend | None:
    """The score blend of a ``config.content.blend`` run over the modalities its tower reads (item
    counts zero until the training data sets them), else ``None``; its floor adds the texts'
    term vectors (``config.content.blend_terms`` columns) when the tower reads text."""
    modalities = [m for m in config.side.encoder_modalities if m in shapes]
    if not config.content.blend or not modalities:
        return None
    return ScoreBlend({m: shapes[m] for m in modalities}, config.user.dim, torch.zeros(num_items + 1),
                      groups=config.content.blend_groups,
                      terms=config.content.blend_terms if "text" in modalities else 0)


class SequentialRecommender(nn.Module):
    """``item`` maps features to embeddings ``[n, d]``; ``user`` maps a sequence of them to user states;
    ``blend`` (optional) mixes the trained score with the content floor's once calibrated.

    Training reads :meth:`embed_items` and ``user``; ranking reads :meth:`catalogue_vectors`
    and :meth:`user_vectors`, which are the blend's when it is active. Parameter names start
    with ``item.`` or ``user.``, so filters stay one line.
    """

    def __init__(self, item: ItemTower, user: UserEncoder | nn.Module,
                 blend: ScoreBlend | None = None) -> None:
        super().__init__()
        self.item = item
        self.user = user
        self.blend = blend

    @property
    def dim(self) -> int:
        """The width ``d`` of item embeddings and user states."""
        return self.user.dim

    @property
    def device(self) -> torch.device:
        """Where the model is (a model without parameters, ``knn``, is where its buffers are)."""
        return next(itertools.chain(self.parameters(), self.buffers())).device

    @property
    def layers(self) -> dict[str, tuple[int, ...]]:
        """modality -> the encoder layers the item tower (and the blend, the last) reads."""
        if self.blend is None:
            return self.item.layers
        wanted = {**self.blend.layers, **self.item.layers}
        return {m: tuple(sorted(set(self.item.layers.get(m, ())) | set(self.blend.layers.get(m, ()))))
                for m in wanted}

    @property
    def blending(self) -> bool:
        """Whether ranking uses the calibrated blend."""
        return self.blend is not None and bool(self.blend.active)

    @property
    def catalogue_width(self) -> int:
        """The width of :meth:`catalogue_vectors`."""
        return self.blend.width if self.blending else self.dim

    def embed_items(self, features: ItemFeatures) -> torch.Tensor:
        """The trained item embeddings ``[n, d]``; the padding id 0 maps to zeros."""
        embeddings = self.item(self._tower_features(features))
        return embeddings * (features.ids != 0).unsqueeze(-1).to(embeddings.dtype)

    def catalogue_vectors(self, features: ItemFeatures) -> torch.Tensor:
        """What ranking stores per item: the trained embedding, or the blend's item vector."""
        trained = self.embed_items(features)
        return self.blend.item_vectors(trained, features) if self.blending else trained

    @torch.no_grad()
    def user_vectors(self, items: torch.Tensor, inputs) -> torch.Tensor:
        """One query per user ``[U, width]`` for left-padded item ids ``inputs [U, L]``
        (numpy or torch), reading the catalogue ``items [N + 1, width]`` of
        :meth:`catalogue_vectors`; one dot product with ``items`` scores every item for
        every user. Without the blend: the user encoder's last-position output."""
        self.eval()
        ids = torch.as_tensor(inputs).to(items.device)
        if not self.blending:
            return self.user(items[ids], ids != 0)[:, -1]
        trained, _ = self.blend.split(items)
        user = self.user(trained[ids], ids != 0)[:, -1]
        content = self.blend.content_query(items[ids], ids != 0)
        return self.blend.query(user, content, self.blend.user_groups(ids))

    def _tower_features(self, features: ItemFeatures) -> ItemFeatures:
        """``features`` with only the layers the tower reads, when the blend added the last."""
        if self.blend is None or not features.states:
            return features
        union, own = self.layers, self.item.layers
        states = {}
        for modality, tensor in features.states.items():
            if modality not in own or union[modality] == own[modality]:
                states[modality] = tensor
            else:
                keep = [union[modality].index(layer) for layer in own[modality]]
                states[modality] = tensor[:, keep]
        return ItemFeatures(features.ids, states, features.present, features.inputs, features.terms)
