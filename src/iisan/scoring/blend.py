"""Blended scoring: what a trained content model adds, what the content floor knows, and a
prior for new and rare items, weighed on the validation split.

A trained tower learns what the training interactions reward: mostly which popular items
follow which. Its 64-wide embedding keeps little of the fine content similarity that makes
an untrained nearest neighbour (``knn``) good on items nobody has bought yet, and items that
never occurred in training get no training signal at all. The blended score of item ``i``
for a user is

    z(u . e_i) + alpha * z(z(h . c_i) + z(g . t_i))
               + beta_cold * [i cold] + beta_tail * [i tail] + gamma * log(1 + count_i)

where ``u . e_i`` is the trained score, ``h . c_i`` the floor's (the cosine of the item's
frozen last-layer content to the recency-weighted mean of the history's, see
:mod:`iisan.models.baselines.knn`), ``g . t_i`` the same over the words of the texts
(the items' hashed TF-IDF vectors ``t_i``, :mod:`iisan.models.terms`; a run without them,
``--blend-terms 0`` or one saved before them, has ``z(h . c_i)`` alone in the floor's
place), ``z`` standardises a score over the catalogue for that user, cold / tail are the
popularity slices of :mod:`iisan.evaluation.slices` (0 and 1-4 occurrences in the training
part; items added after training are cold), and
``count_i`` is the item's number of occurrences there (a popularity prior, positive or
negative, that the standardised trained score no longer carries at its own scale).

The weights ``alpha``, ``beta`` and ``gamma`` are one set per group of users, grouped by
the share of their history that is rare (cold or tail items; items added after training
count as cold): users who keep choosing rare items tend to choose one next, where the
floor knows more than the trained score. The groups' bounds are quantiles of that share
over the validation users (``groups`` of them; one group is a single set of weights).

It stays one inner product, so the item index serves it unchanged: ``z`` only needs the
standard deviation over items, ``sqrt(u' C u)`` with ``C`` the covariance of the item
vectors, a per-user constant that scales the query. Items are
``[e_i, c_i, t_i, [cold], [tail], log(1 + count_i)]``, queries
``[u / sd_u, alpha * f / sd_f, beta_cold, beta_tail, gamma]`` with the user's group's
weights and ``f = [h / sd_h, g / sd_g]``.

The weights are fitted after training by :func:`iisan.scoring.calibrate.calibrate_blend`
on the validation split, never on test; :class:`~iisan.scoring.scorer.BlendScorer` composes
a fitted blend with the trained model.
"""

from __future__ import annotations

import torch
from torch import nn

from iisan.evaluation.slices import SLICES
from iisan.models.baselines.knn import FrozenContentItems, RecencyMean
from iisan.models.inputs import ItemFeatures
from iisan.models.terms import TermVectors

# The priors' slices, in the order of the flags on item vectors (head gets no flag: it is
# what the trained score already ranks well), then the log-popularity feature.
PRIOR_SLICES = tuple((name, low, high) for name, low, high in SLICES if name != "head")
PRIORS = (*(name for name, _, _ in PRIOR_SLICES), "log_popularity")
RARE_MOST = max(high for _, _, high in PRIOR_SLICES)  # an item seen at most this often is rare
# Validation users a group of users needs for weights of its own: fitted on fewer, they are
# noise (measured in docs/results/new-and-rare-items.md, MovieLens-100K with posters).
MIN_GROUP_USERS = 1000


class ScoreBlend(nn.Module):
    """The floor's item and user sides and the blend's weights (buffers, set by calibration).

    Args:
        shapes: modality -> ``(L + 1, D)`` of the content the floor reads (the last layer).
        dim: the width ``d`` of the trained embeddings.
        counts: ``[N + 1]`` occurrences of each item in the training part.
        groups: how many groups of users get their own weights.
        terms: columns of the texts' term vectors in the floor (0: none): part of the
            frozen content, fitted on the catalogue's texts as training ends
            (:func:`~iisan.models.baselines.knn.fit_frozen_content`).
    """

    def __init__(self, shapes: dict[str, tuple[int, int]], dim: int, counts: torch.Tensor,
                 groups: int = 1, terms: int = 0) -> None:
        super().__init__()
        # whitened or not: see calibrate_blend
        self.content = FrozenContentItems(tuple(shapes), shapes,
                                          terms=TermVectors(len(counts) - 1, terms) if terms else None)
        self.history = RecencyMean(self.content.dim)
        self.dim = dim
        self.register_buffer("counts", torch.as_tensor(counts, dtype=torch.long).clone())
        self.register_buffer("alpha", torch.zeros(groups))
        self.register_buffer("priors", torch.zeros(groups, len(PRIORS)))
        self.register_buffer("group_bounds", torch.zeros(groups - 1))  # of the rare share; see fit_groups
        self.register_buffer("trained_cov", torch.eye(dim))
        self.register_buffer("content_cov", torch.eye(self.content.dim))

    @property
    def layers(self) -> dict[str, tuple[int, ...]]:
        return self.content.layers

    @property
    def terms(self) -> TermVectors | None:
        """The texts' term vectors the floor reads after the frozen states, if any."""
        return self.content.terms

    @property
    def width(self) -> int:
        """The width of item vectors and queries."""
        return self.dim + self.content.dim + len(PRIORS)

    @property
    def groups(self) -> int:
        return len(self.alpha)

    def _counts_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Training occurrences of ``ids``; ids beyond the training catalogue (added later) 0."""
        known = ids < len(self.counts)
        return torch.where(known, self.counts[ids.clamp(max=len(self.counts) - 1)], torch.zeros_like(ids))

    def rare_share(self, ids: torch.Tensor) -> torch.Tensor:
        """``[U]``: the share of each history's items (left-padded ids ``[U, L]``) that are rare."""
        real = ids != 0
        rare = (self._counts_of(ids) <= RARE_MOST) & real
        return rare.sum(-1).float() / real.sum(-1).clamp(min=1).float()

    def user_groups(self, ids: torch.Tensor) -> torch.Tensor:
        """``[U]``: each history's group, 0 (fewest rare items) to ``groups - 1``."""
        return torch.bucketize(self.rare_share(ids), self.group_bounds, right=True)

    @torch.no_grad()
    def fit_groups(self, ids: torch.Tensor, min_users: int | None = None) -> int:
        """Group bounds at the quantiles of the rare share over the histories ``ids [U, L]``
        (the validation users'), so the groups are about equally large; returns how many
        are used. Each group needs ``min_users`` of them (default :data:`MIN_GROUP_USERS`:
        fewer users' weights are noise), so a small validation split uses fewer groups than
        :attr:`groups` and the rest stay empty (bound 2, above any share). A share equal to
        a bound belongs to the group above it; where many users share one value (a dense
        catalogue, where most histories hold no rare item) a group may be empty, and the
        others then cover everyone."""
        used = max(1, min(self.groups, len(ids) // (min_users or MIN_GROUP_USERS)))
        bounds = torch.full((self.groups - 1,), 2.0, dtype=torch.float64)  # saved weights stay finite
        if used > 1:
            levels = torch.arange(1, used, dtype=torch.float64) / used
            bounds[: used - 1] = torch.quantile(self.rare_share(ids).double().cpu(), levels)
        self.group_bounds.copy_(bounds)
        return used

    def prior_features(self, ids: torch.Tensor) -> torch.Tensor:
        """``[n, len(PRIORS)]``: 0/1 for each prior slice the item is in, then
        ``log(1 + count)``. Ids beyond the training catalogue (added later) count 0 times, so
        are cold; padding gets zeros."""
        counts = self._counts_of(ids)
        flags = [((counts >= low) & (counts <= high)).float() for _, low, high in PRIOR_SLICES]
        features = torch.stack([*flags, torch.log1p(counts.float())], dim=-1)
        return features * (ids != 0).unsqueeze(-1).float()

    def item_vectors(self, trained: torch.Tensor, features: ItemFeatures) -> torch.Tensor:
        """``[n, d + D_c + priors]``: the trained embedding, the frozen content (with the
        term vectors, if any), the priors' features."""
        content = self.content(features) * (features.ids != 0).unsqueeze(-1).to(trained.dtype)
        return torch.cat([trained, content, self.prior_features(features.ids)], dim=-1)

    def split(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The trained and the content parts of item vectors from :meth:`item_vectors`."""
        return items[..., : self.dim], items[..., self.dim : self.dim + self.content.dim]

    def content_query(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The floor's user vector ``h`` for each row of item vectors ``[U, L, width]``."""
        return self.history(self.split(items)[1], mask)[:, -1]

    def query(self, user: torch.Tensor, content: torch.Tensor, groups: torch.Tensor | None = None,
              alpha=None, priors=None) -> torch.Tensor:
        """``[U, width]``: ``user`` (trained) and ``content`` (floor) queries, each
        divided by the standard deviation of its scores over the catalogue, weighted by each
        user's group's weights (``groups [U]``, see :meth:`user_groups`; default group 0), or
        by ``alpha`` (a number) and ``priors`` ``[len(PRIORS)]`` when given."""
        groups = torch.zeros(len(user), dtype=torch.long, device=user.device) if groups is None else groups
        alpha = self.alpha[groups].unsqueeze(-1) if alpha is None else alpha
        priors = self.priors[groups] if priors is None else priors.expand(len(user), -1)
        trained = user / _spread(user, self.trained_cov)
        return torch.cat([trained, alpha * self._floor_query(content), priors.to(user.dtype)], dim=-1)

    def _floor_query(self, content: torch.Tensor) -> torch.Tensor:
        """The floor's query, one standard deviation of its scores over the catalogue: with
        term vectors, the two parts each standardised, then their sum."""
        if self.terms is None:
            return content / _spread(content, self.content_cov)
        d = self.content.dim - self.terms.dims
        meaning, words = content[:, :d], content[:, d:]
        parts = torch.cat([meaning / _spread(meaning, self.content_cov[:d, :d]),
                           words / _spread(words, self.content_cov[d:, d:])], dim=-1)
        return parts / _spread(parts, self.content_cov)

    @torch.no_grad()
    def fit_spread(self, items: torch.Tensor) -> None:
        """The covariances behind ``z``, from the catalogue's item vectors ``[N + 1, width]``
        (row 0, padding, left out)."""
        trained, content = self.split(items[1:].double())
        # Population covariances: the standard deviation over the catalogue's items, as z() means.
        self.trained_cov.copy_(torch.cov(trained.T, correction=0).reshape(self.trained_cov.shape))
        self.content_cov.copy_(torch.cov(content.T, correction=0).reshape(self.content_cov.shape))


def _spread(query: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """The standard deviation over items of ``query . item``: ``sqrt(q' C q)``, ``[U, 1]``."""
    variance = ((query @ cov.to(query.dtype)) * query).sum(dim=-1, keepdim=True)
    return variance.clamp(min=1e-12).sqrt()
