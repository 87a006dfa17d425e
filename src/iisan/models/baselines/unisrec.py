"""``unisrec``: UniSRec (Hou et al., KDD 2022) as a peer in this harness, over the same
cached frozen text states as every content method.

Written from the paper's description: each item's frozen text embedding goes through a
mixture-of-experts adaptor, ``G`` parametric whitenings ``(x - b_k) W_k`` mixed by a softmax
gate of ``x`` (noisy while training), then the same SASRec user encoder as every method. The
scores are cosines over a temperature (the authors' fine-tuning). Two settings:

- ``transductive``: the adapted text plus a learned item-id embedding (new items, which have
  no id embedding yet, are ranked by their text alone);
- ``inductive``: the adapted text alone, so a new item is ranked like a trained one.

Trained from scratch on the target data (no pre-training on other domains), which is how
this harness compares every method: the same split, cache, evaluation and recipe knobs.
It reads the last layer of the text encoder (the paper's BERT ``[CLS]``; here the cache's
pooling).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from iisan.models.inputs import ItemFeatures
from iisan.models.user import UserEncoder

TEMPERATURE = 0.07  # the authors' fine-tuning temperature
GATE_NOISE_FLOOR = 1e-2  # the gate's noise scale is softplus(x W_noise) + this, while training


class ParametricWhitening(nn.Module):
    """``(dropout(x) - b) W``: a learned centring and projection of a frozen embedding."""

    def __init__(self, width: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.bias = nn.Parameter(torch.zeros(width))
        self.projection = nn.Linear(width, dim, bias=False)
        nn.init.normal_(self.projection.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.dropout(x) - self.bias)


class MixtureAdaptor(nn.Module):
    """``sum_k g_k(x) PW_k(x)`` over ``experts`` parametric whitenings; the gate is a softmax
    of ``x W_gate``, with Gaussian noise of scale ``softplus(x W_noise)`` while training (so
    every expert keeps being tried)."""

    def __init__(self, width: int, dim: int, experts: int, dropout: float) -> None:
        super().__init__()
        self.experts = nn.ModuleList(ParametricWhitening(width, dim, dropout) for _ in range(experts))
        self.gate = nn.Parameter(torch.zeros(width, experts))
        self.noise = nn.Parameter(torch.zeros(width, experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = x @ self.gate
        if self.training:
            logits = logits + torch.randn_like(logits) * (F.softplus(x @ self.noise) + GATE_NOISE_FLOOR)
        gates = torch.softmax(logits, dim=-1)  # [n, experts]
        adapted = torch.stack([expert(x) for expert in self.experts], dim=-2)  # [n, experts, d]
        return (gates.unsqueeze(-1) * adapted).sum(dim=-2)


class UniSRecItems(nn.Module):
    """The item tower: the adaptor over the last text layer (``transductive``: plus an id
    embedding for the training catalogue), unit length times ``TEMPERATURE ** -0.5``, so
    that with the user side's the dot product is the cosine over the temperature."""

    def __init__(self, shape: tuple[int, int], num_items: int, dim: int, experts: int, transductive: bool,
                 dropout: float) -> None:
        super().__init__()
        self.layers = {"text": (shape[0] - 1,)}  # the last layer: always cached
        self.adaptor = MixtureAdaptor(shape[1], dim, experts, dropout)
        self.ids = nn.Embedding(num_items + 1, dim) if transductive else None
        if self.ids is not None:
            nn.init.normal_(self.ids.weight, std=0.02)

    def side_parameters(self) -> list[nn.Parameter]:
        return []

    def forward(self, features: ItemFeatures) -> torch.Tensor:
        text = features.states["text"][:, -1].float()
        vectors = self.adaptor(text) * features.present["text"].unsqueeze(-1).to(text.dtype)
        if self.ids is not None:  # items added after training (ids beyond the table) have none
            known = (features.ids > 0) & (features.ids < self.ids.num_embeddings)
            vectors = vectors + self.ids(torch.where(known, features.ids, 0)) * known.unsqueeze(-1).to(text.dtype)
        return F.normalize(vectors, dim=-1) * TEMPERATURE ** -0.5


class CosineUser(nn.Module):
    """The SASRec user encoder, its states at unit length times ``TEMPERATURE ** -0.5``."""

    def __init__(self, encoder: UserEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.dim = encoder.dim

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder(items, mask), dim=-1) * TEMPERATURE ** -0.5


def build_tower(config, context) -> UniSRecItems:
    """The ``unisrec`` entry of the method registry (:mod:`iisan.methods`)."""
    from iisan.errors import ConfigError

    if "text" not in context.shapes or "text" not in config.side.encoder_modalities:
        raise ConfigError("--method unisrec reads the text encoder's states: give a cache that holds them (encode "
                          "with a --text-encoder) and a --modality that reads text")
    options = config.method_options
    return UniSRecItems(context.shapes["text"], context.num_items, config.user.dim, options.unisrec_experts,
                        options.unisrec_setting == "transductive", options.unisrec_dropout)


def build_user(config, item_tower: UniSRecItems) -> CosineUser:
    return CosineUser(UserEncoder(config.user))
