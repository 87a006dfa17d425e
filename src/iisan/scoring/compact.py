"""Compact served vectors: a narrow first stage whose candidates are scored again exactly.

A blended run scores one inner product over wide vectors, ``[e_i (d), c_i (floor), p_i
(priors)]``: 963 floats an item on Scientific's defaults against an id model's 64. Searching
them costs every query that width over the whole catalogue. So the index searches a narrow
map of them, and only its best ``M`` items are scored again with the full vectors:

    first stage:  q~ . x~   with  x~ = [R' h_i, p_i],  q~ = [L' g_u, w_u]
    second stage: q . x     over the first stage's top M, exactly as the blend scores

where ``h_i`` is an item's trained-and-floor part (everything but the priors) and ``g_u`` the
query's, ``p_i`` and ``w_u`` the priors' columns, kept exact (three floats: they move whole
slices of the catalogue). ``L`` and ``R`` (``[width - priors, r]``) give the best rank-``r``
approximation of ``g . h`` in mean square over the catalogue's items and the validation
users' queries: with ``Sq`` and ``Sx`` their second-moment matrices, the SVD
``Sq^1/2 Sx^1/2 = U S V'`` gives ``L = Sq^-1/2 U_r S_r^1/2`` and ``R = Sx^-1/2 V_r S_r^1/2``
(the Eckart-Young theorem on ``E[(q' (I - L R') x)^2] = ||Sq^1/2 (I - L R') Sx^1/2||^2``).
Plain principal components of the items would keep the directions every item shares, the
ones the floor's whitening removes because they rank nothing.

``M`` is chosen on validation (:func:`choose_candidates`): the fewest candidates whose
two-stage criterion is within :data:`TOLERANCE` of exact scoring's. A target outside the
candidates is a miss, so evaluation measures exactly what is served.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from iisan.two_stage import (
    CODE_MAX, EXCLUDED, FirstStage, code_scores, first_stage_top, item_codes, query_codes,
)


CANDIDATE_GRID = (50, 100, 200, 400, 800, 1600)
TOLERANCE = 1e-3  # of the criterion, relative: the served list may lose at most this much on validation
EPS = 1e-6  # relative to the largest eigenvalue: directions below it are left out of the inverse roots


class CompactStage(nn.Module):
    """The maps of the first stage and how many candidates it hands on (buffers: saved with
    the scorer's weights).

    Args:
        width: the full vectors' width.
        rank: ``r``, the width of the mapped trained-and-floor part.
        priors: the full vectors' last columns kept as they are.
    """

    def __init__(self, width: int, rank: int, priors: int) -> None:
        super().__init__()
        self.priors = priors
        self.register_buffer("query_map", torch.zeros(width, rank + priors))
        self.register_buffer("item_map", torch.zeros(width, rank + priors))
        self.register_buffer("code_scale", torch.ones(rank + priors))  # iisan.two_stage: the int8 codes' step
        self.register_buffer("candidates", torch.tensor(0, dtype=torch.long))

    @property
    def width(self) -> int:
        """The first stage's width: what the index holds per item."""
        return self.item_map.shape[1]

    @property
    def fitted(self) -> bool:
        return int(self.candidates) > 0

    def items(self, vectors: torch.Tensor) -> torch.Tensor:
        """``[n, w]``: full item vectors ``[n, width]`` mapped for the first stage."""
        return vectors @ self.item_map.to(vectors.dtype)

    def queries(self, vectors: torch.Tensor) -> torch.Tensor:
        """``[U, w]``: full queries ``[U, width]`` mapped for the first stage."""
        return vectors @ self.query_map.to(vectors.dtype)

    def first_stage(self) -> FirstStage:
        """The maps and candidates as the index takes them."""
        return FirstStage(*(t.detach().cpu().float().numpy() for t in (self.query_map, self.item_map, self.code_scale)),
                          int(self.candidates))

    @torch.no_grad()
    def fit(self, items: torch.Tensor, queries: torch.Tensor) -> None:
        """The maps from the catalogue's full vectors ``items [N + 1, width]`` (row 0, padding,
        left out) and a sample of queries ``[U, width]`` (see the module)."""
        head = items.shape[1] - self.priors
        rank = self.width - self.priors
        x = items[1:, :head].double().cpu().numpy()
        q = queries[:, :head].double().cpu().numpy()
        root_q, inverse_q = _roots(q.T @ q / len(q))
        root_x, inverse_x = _roots(x.T @ x / len(x))
        u, s, vt = np.linalg.svd(root_q @ root_x)
        scale = np.sqrt(s[:rank])
        query_map = np.zeros((items.shape[1], self.width))
        item_map = np.zeros_like(query_map)
        query_map[:head, :rank] = inverse_q @ u[:, :rank] * scale
        item_map[:head, :rank] = inverse_x @ vt[:rank].T * scale
        query_map[head:, rank:] = item_map[head:, rank:] = np.eye(self.priors)  # the priors, exact
        self.query_map.copy_(torch.from_numpy(query_map))
        self.item_map.copy_(torch.from_numpy(item_map))
        largest = self.items(items[1:].to(self.item_map.dtype)).abs().amax(dim=0)
        self.code_scale.copy_(largest.clamp(min=torch.finfo(largest.dtype).tiny) / CODE_MAX)

    def query_codes(self, queries: torch.Tensor) -> torch.Tensor:
        """``[U, w]`` int8: full queries as the first stage reads them (:mod:`iisan.two_stage`)."""
        return query_codes(self.queries(queries), self.code_scale.to(queries.dtype))

    def codes(self, items: torch.Tensor) -> torch.Tensor:
        """``[n, w]`` int8: full item vectors as the first stage holds them (:mod:`iisan.two_stage`)."""
        return item_codes(self.items(items), self.code_scale.to(items.dtype))


def _roots(second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``S^1/2`` and the pseudo-inverse ``S^-1/2`` of a second-moment matrix."""
    values, vectors = np.linalg.eigh(second)
    values = np.clip(values, 0, None)
    kept = values > EPS * max(values.max(), 1e-300)
    root = (vectors * np.sqrt(values)) @ vectors.T
    inverse = (vectors * np.where(kept, 1 / np.sqrt(np.where(kept, values, 1)), 0)) @ vectors.T
    return root, inverse


def served_scores(scores: torch.Tensor, query_codes_: torch.Tensor, item_codes_: torch.Tensor,
                  candidates: int) -> torch.Tensor:
    """``scores [U, N + 1]`` (full, -inf where an item may not be recommended) kept on the
    first stage's best ``candidates`` (the integer scores of ``query_codes_ [U, w]`` against
    ``item_codes_ [N + 1, w]``, chosen by :func:`~iisan.two_stage.first_stage_top` as the
    index chooses them) and -inf elsewhere: what a served query ranks. A target outside
    them is not served, so :func:`~iisan.evaluation.metrics.pessimistic_ranks` makes it a miss."""
    first = code_scores(query_codes_, item_codes_).masked_fill(~torch.isfinite(scores), EXCLUDED)
    top = first_stage_top(first, candidates)
    kept = torch.full_like(scores, -torch.inf)
    return kept.scatter_(1, top, scores.gather(1, top))
