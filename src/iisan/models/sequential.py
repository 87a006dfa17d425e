"""An item tower and a user encoder, put together: the whole sequential recommender."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from iisan.config import ModelConfig
from iisan.methods import TowerContext, get_method
from iisan.models.inputs import ItemFeatures
from iisan.models.fusion import ItemTower
from iisan.models.id_offset import ContentWithIdOffset
from iisan.models.user import UserEncoder


def build_item_encoder(config: ModelConfig, shapes: dict[str, tuple[int, int]], num_items: int,
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


class SequentialRecommender(nn.Module):
    """``item`` maps features to embeddings ``[n, d]``; ``user`` maps a sequence of them to user states.

    Training reads :meth:`embed_items` and ``user``; ranking by the model's own scores reads
    :meth:`catalogue_vectors` and :meth:`user_vectors` (a scorer, :mod:`iisan.scoring`, may
    compose them with more). Parameter names start with ``item.`` or ``user.``, so filters
    stay one line.
    """

    def __init__(self, item: ItemTower, user: UserEncoder | nn.Module) -> None:
        super().__init__()
        self.item = item
        self.user = user

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
        """modality -> the encoder layers the item tower reads."""
        return self.item.layers

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Every parameter, by the part it belongs to, each part trained at a rate of its own (the
        recipe names the rates, as nanoGPT's ``configure_optimizers`` splits by role):
        ``rest`` (user encoder, heads, fusion), ``side`` (the side network's blocks and gates, or
        the encoder weights an encoder baseline trains), ``id_offsets`` (per-item vectors, if
        the tower has them). In that order, the order of a saved optimizer's groups."""
        side = list(self.item.side_parameters())
        offsets = getattr(self.item, "offsets", None)
        offset_params = list(offsets.parameters()) if offsets is not None else []
        chosen = {id(p) for p in side + offset_params}
        return {"rest": [p for p in self.parameters() if id(p) not in chosen],
                "side": [p for p in self.parameters() if id(p) in {id(q) for q in side}],
                "id_offsets": [p for p in self.parameters() if id(p) in {id(q) for q in offset_params}]}

    @property
    def catalogue_width(self) -> int:
        """The width of :meth:`catalogue_vectors`."""
        return self.dim

    def embed_items(self, features: ItemFeatures) -> torch.Tensor:
        """The trained item embeddings ``[n, d]``; the padding id 0 maps to zeros. ``features``
        may hold more layers than the tower reads (a scorer's): the tower takes its own."""
        embeddings = self.item(self._tower_features(features))
        return embeddings * (features.ids != 0).unsqueeze(-1).to(embeddings.dtype)

    def catalogue_vectors(self, features: ItemFeatures) -> torch.Tensor:
        """What ranking by the model's own scores stores per item: the trained embedding."""
        return self.embed_items(features)

    @torch.no_grad()
    def user_vectors(self, items: torch.Tensor, inputs) -> torch.Tensor:
        """One query per user ``[U, d]`` for left-padded item ids ``inputs [U, L]`` (numpy or
        torch), reading the catalogue ``items [N + 1, d]`` of :meth:`catalogue_vectors`: the
        user encoder's last-position output, whose dot product with ``items`` scores every item."""
        self.eval()
        ids = torch.as_tensor(inputs).to(items.device)
        return self.user(items[ids], ids != 0)[:, -1]

    first_stage = None  # the model's index serves its own vectors: one exact stage

    def served(self, queries: torch.Tensor, items: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``scores [U, N + 1]`` as a served query ranks them: the model's index serves every
        item's exact score (a scorer may serve fewer, see :mod:`iisan.scoring.compact`)."""
        return scores

    def _tower_features(self, features: ItemFeatures) -> ItemFeatures:
        """``features`` with only the layers the tower reads, when a scorer added others."""
        if not features.states:
            return features
        own = self.item.layers
        states = {}
        for modality, tensor in features.states.items():
            layers = features.layers.get(modality)
            if modality not in own or layers is None or tuple(layers) == tuple(own[modality]):
                states[modality] = tensor
            else:
                states[modality] = tensor[:, [tuple(layers).index(layer) for layer in own[modality]]]
        return ItemFeatures(features.ids, states, features.present, features.inputs, features.terms, own)
