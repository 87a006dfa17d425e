"""``knn``: the content-only floor. No trainable parameter, no training.

An item is its frozen encoders' last-layer state, L2-normalised per modality and
concatenated (so the dot product of two items is the sum of their per-modality cosines;
a missing image adds 0), and with ``--knn-terms`` its text's term vector
(:mod:`iisan.models.terms`), whose cosine is then added too. A user is the recency-weighted mean of their history's item
vectors, normalised: the item ``k`` steps before the last weighs ``RECENCY_DECAY ** k``.
Scores are therefore cosines between the history's content and each item's content.

It is the bar below which a trained content model has learned to ignore content: on new
and rare items it needs no interaction at all to work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from iisan.models.inputs import ItemFeatures
from iisan.models.terms import TermVectors

log = logging.getLogger(__name__)

# Weight of the item k steps before the last one: 0.5 ** k. Chosen on Scientific's
# validation split over {0.5, 0.8, 1.0} (README, "New and rare items").
RECENCY_DECAY = 0.5
# Added to each eigenvalue of the content covariance before whitening, so directions with
# (almost) no variance are not blown up.
WHITEN_EPS = 1e-6


class FrozenContentItems(nn.Module):
    """The last cached layer of each modality, L2-normalised, concatenated: ``[n, sum D_m]``.

    Optionally whitened first (``whiten``, fitted by :meth:`fit_whitening`): each modality's
    state less the catalogue's mean, times the inverse square root of the catalogue's
    covariance, so that the few directions every item shares do not dominate the cosine. The
    buffers hold the identity until fitted (and in runs saved before them), which leaves the
    states as they are. With ``terms`` (a :class:`~iisan.models.terms.TermVectors`, fitted
    with the whitening, :func:`fit_frozen_content`), each item's term vector follows the states.
    """

    def __init__(self, modalities: tuple[str, ...], shapes: dict[str, tuple[int, int]], whiten: str = "off",
                 terms: TermVectors | None = None) -> None:
        super().__init__()
        self.whiten = whiten  # how fit_frozen_content fits it: off, on, auto (see choose_whitening)
        self.terms = terms
        self.layers = {m: (shapes[m][0] - 1,) for m in modalities}  # the last layer: always cached
        self.dim = sum(shapes[m][1] for m in modalities) + (terms.dims if terms is not None else 0)
        for m in modalities:
            self.register_buffer(f"mean_{m}", torch.zeros(shapes[m][1]))
            self.register_buffer(f"whiten_{m}", torch.eye(shapes[m][1]))

    def side_parameters(self) -> list[nn.Parameter]:
        return []

    def forward(self, features: ItemFeatures) -> torch.Tensor:
        parts = []
        for modality in self.layers:
            state = features.states[modality][:, -1].float() - getattr(self, f"mean_{modality}")
            state = F.normalize(state @ getattr(self, f"whiten_{modality}"), dim=-1)
            parts.append(state * features.present[modality].unsqueeze(-1).to(state.dtype))
        if self.terms is not None:
            parts.append(self.terms.of(features).to(parts[0].dtype))
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def reset_whitening(self) -> None:
        """Back to the states as they are: mean zero, the identity."""
        for m in self.layers:
            getattr(self, f"mean_{m}").zero_()
            getattr(self, f"whiten_{m}").copy_(torch.eye(len(getattr(self, f"mean_{m}"))))

    @torch.no_grad()
    def fit_whitening(self, source, num_items: int, chunk: int = 4096) -> None:
        """Fit the mean and whitening matrix of each modality on the catalogue's items
        ``1..num_items`` that have it, read from ``source`` (a :class:`~iisan.features.FeatureSource`)
        in chunks. The matrix is ``V (L + eps)^-1/2 V'`` of the covariance's eigenvectors ``V``
        and eigenvalues ``L``; a modality present on fewer than two items stays as it is."""
        sums = {m: (0, 0.0, 0.0) for m in self.layers}
        for start in range(1, num_items + 1, chunk):
            features = source.features(np.arange(start, min(start + chunk, num_items + 1)))
            for m in self.layers:
                states = features.states[m][:, -1].double()
                states = states[features.present[m].bool().to(states.device)]
                count, total, outer = sums[m]
                sums[m] = (count + len(states), total + states.sum(0), outer + states.T @ states)
        for m, (count, total, outer) in sums.items():
            if count < 2:
                continue
            mean = total / count
            values, vectors = torch.linalg.eigh(outer / count - torch.outer(mean, mean))
            scale = (values.clamp(min=0) + WHITEN_EPS).rsqrt()
            getattr(self, f"mean_{m}").copy_(mean.float())
            getattr(self, f"whiten_{m}").copy_(((vectors * scale) @ vectors.T).float())


def fit_frozen_content(model: nn.Module, source, num_items: int, texts,
                       criterion: Callable[[], float] | None = None) -> int:
    """Fit what :class:`FrozenContentItems` in ``model`` were built to fit, on the catalogue:
    the term vectors (``knn --knn-terms``; on ``texts``, the item texts by id 1..N), then the
    whitening (``knn --knn-whiten``; ``auto`` keeps the way with the higher ``criterion()``,
    the model's validation metric). How many modules were fitted."""
    fitted = 0
    for module in model.modules():
        if isinstance(module, FrozenContentItems) and (module.whiten != "off" or module.terms is not None):
            if module.terms is not None:
                module.terms.fit(texts)
            if module.whiten != "off":
                if module.whiten == "auto" and criterion is None:
                    raise ValueError("knn_whiten auto chooses on validation: give fit_frozen_content a criterion")
                # only auto compares: on and off need no validation pass
                measure = (lambda: {"valid_after": criterion()}) if module.whiten == "auto" else dict
                choose_whitening(module, source, num_items, module.whiten, measure, module, "knn")
            fitted += 1
    return fitted


def choose_whitening(content: FrozenContentItems, source, num_items: int, whiten: str,
                     fit: Callable[[], dict[str, Any]], owner: nn.Module, what: str) -> dict[str, Any]:
    """The one way a floor's whitening is decided, for ``--knn-whiten`` and ``--blend-whiten``:
    ``fit()`` (what is fitted on the content, returning its validation ``valid_after``: the
    blend's weights; for knn, nothing but the measure) is run with the content as it is
    (``off``), whitened on the catalogue (``on``), or both ways, keeping the better (``auto``;
    a tie keeps it as it is): ``owner``'s state (the content and what ``fit`` set) is put back
    to the way kept. Returns ``fit()``'s result with ``"whitened"``; ``auto`` adds
    ``"valid_whitened"`` and ``"valid_unwhitened"``."""
    content.reset_whitening()
    if whiten == "off":
        return {**fit(), "whitened": False}
    content.fit_whitening(source, num_items)
    whitened = {**fit(), "whitened": True}
    if whiten == "on":
        return whitened
    kept = {name: value.clone() for name, value in owner.state_dict().items()}
    content.reset_whitening()
    unwhitened = {**fit(), "whitened": False}
    chosen = whitened if whitened["valid_after"] > unwhitened["valid_after"] else unwhitened
    if chosen is whitened:
        owner.load_state_dict(kept)
    log.info("%s: whitened content %s (valid %.4f whitened, %.4f as it is)", what,
             "kept" if chosen is whitened else "not kept", whitened["valid_after"], unwhitened["valid_after"])
    return {**chosen, "valid_whitened": whitened["valid_after"], "valid_unwhitened": unwhitened["valid_after"]}


class RecencyMean(nn.Module):
    """At each position, the normalised recency-weighted mean of the items up to it (causal,
    padding ignored): ``[batch, length, D]``, the user-encoder interface."""

    def __init__(self, dim: int, decay: float = RECENCY_DECAY) -> None:
        super().__init__()
        self.dim = dim
        # A buffer, so the module moves with the model (and has a device without parameters).
        self.register_buffer("decay", torch.tensor(float(decay)), persistent=False)

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = items.shape[1]
        steps = torch.arange(length, device=items.device)
        age = (steps[:, None] - steps[None, :]).to(items.dtype)  # [query, key]: how far back
        weights = torch.where(age >= 0, self.decay ** age.clamp(min=0), torch.zeros_like(age))
        weights = weights[None] * mask[:, None, :].to(items.dtype)  # [batch, query, key]
        return F.normalize(weights @ items, dim=-1)


def build_tower(config, context) -> FrozenContentItems:
    """The ``knn`` entry of the method registry (:mod:`iisan.methods`)."""
    modalities = tuple(m for m in config.side.encoder_modalities if m in context.shapes)
    words = config.method_options.knn_terms if "text" in modalities else 0
    return FrozenContentItems(modalities, context.shapes, whiten=config.method_options.knn_whiten,
                              terms=TermVectors(context.num_items, words) if words else None)


def build_user(config, item_tower: FrozenContentItems) -> RecencyMean:
    """The ``knn`` user side: no transformer, the history's recency-weighted mean."""
    return RecencyMean(item_tower.dim)
