"""Fitting the score blend (:mod:`iisan.scoring.blend`) of a trained model on validation.

Coordinate ascent over small grids: the content floor's weight, then the cold prior, the
tail prior and the log-popularity prior, each keeping the best validation score so far,
until a round changes nothing. Starting from the trained score alone (all zero), the blend
is only kept where it scores better on validation; test is never read. With groups of
users (:class:`~iisan.scoring.blend.ScoreBlend`), the ascent first moves every group's
weights together, then each group's on its own from there.

The floor may read its content whitened (``whiten``): each encoder's catalogue mean
removed and its covariance made the identity, so that the directions every item shares do
not dominate the cosine; with ``auto`` the blend is fitted both ways and the better kept.

The validation score is chosen by ``select``: ``overall``, NDCG@10 over the validation
users (where users whose next item is popular weigh most, as they are most of them), or
``balanced``, the mean of NDCG@10 over the cold, tail and head slices of their targets
(:mod:`iisan.evaluation.slices`), which weighs new and rare items as much as popular ones.

Each user's two standardised score rows (trained, floor) are computed once; a setting's
scores are then ``trained + alpha * floor + priors``, a few additions per item, and only
what a setting can change is scored (:class:`_Criterion`; the criterion is exactly what
scoring every user gives). The rows of at most
``CALIBRATION_SCORES // (2 (N + 1))`` users are held at once (a fixed random subset of the
validation users when there are more, never fewer than ``MIN_USERS``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple, get_args

import numpy as np
import torch

from iisan.data.split import EvalSplit, Splits
from iisan.distributed import LOCAL, Workers
from iisan.errors import ConfigError
from iisan.evaluation.metrics import MISS, SELECT_K, SELECT_METRIC, metrics_from_ranks, pessimistic_ranks
from iisan.evaluation.slices import SLICE_NAMES, slice_of
from iisan.evaluation.ranking import item_embeddings
from iisan.features import FeatureSource
from iisan.models.sequential import SequentialRecommender
from iisan.scoring.blend import PRIORS
from iisan.scoring.compact import CANDIDATE_GRID, TOLERANCE, CompactStage, served_scores
from iisan.config import ScoreConfig
from iisan.method_options import Whitening
from iisan.models.baselines.knn import choose_whitening
from iisan.scoring.scorer import BlendScorer, build_blend

log = logging.getLogger(__name__)

SELECTIONS = ("overall", "balanced")
WHITENINGS = get_args(Whitening)  # the floor's content: whichever validation prefers, whitened, as it is
# The grids: steps of 0.125 (0.05 for popularity) where fitted weights fall, chosen over
# coarser steps on the validation users calibration leaves out (docs/results/new-and-rare-items.md).
ALPHAS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.25, 1.5, 2.0)  # the floor's weight, in sds
SLICE_PRIORS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0, 1.25, 1.5)  # a slice's bonus, in sds of a score
POPULARITY_PRIORS = (-0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)  # per unit of log(1 + count)
GRIDS = (ALPHAS, *(SLICE_PRIORS,) * (len(PRIORS) - 1), POPULARITY_PRIORS)  # in the order of a weight tuple
MAX_ROUNDS = 3
# A margin far above float32 rounding of these sums (standardised scores, weights of at most
# a few units), so that the bounds only call an item certain where exact scoring agrees.
BOUND_MARGIN = 1e-3
BLOCK_USERS = 64  # scored users whose undecided items are ranked together
CALIBRATION_SCORES = 1 << 28  # float32 scores held at once (1 GiB)
MIN_USERS = 256
USER_CHUNK = 1024


def fit_scorer(model: SequentialRecommender, source: FeatureSource, shapes: dict[str, tuple[int, int]],
               texts: list[str | None], splits: Splits, options: ScoreConfig, include_history: bool = False,
               workers: Workers = LOCAL, seed: int = 0) -> BlendScorer | None:
    """A blend for ``model`` fitted on its catalogue and validation split: the word vectors on
    the catalogue's ``texts`` (item ids 1..N in order), the items' training counts from
    ``splits``, then the weights (:func:`calibrate_blend`); ``None`` for a model that reads no
    content. ``source`` must hold the last layer of each modality the tower reads
    (:func:`~iisan.scoring.scorer.scoring_layers`)."""
    blend = build_blend(model, shapes, len(texts), options)
    if blend is None:
        return None
    blend.counts.copy_(torch.from_numpy(splits.popularity))  # the cold / tail priors: the training data's slices
    if blend.terms is not None:
        blend.terms.fit(texts)
    scorer = BlendScorer(model, blend, options)
    scorer.calibration = calibrate_blend(scorer, source, len(texts), splits.valid, include_history, workers,
                                         seed=seed, select=options.blend_select, whiten=options.blend_whiten)
    scorer.calibration["compact"] = fit_compact(scorer, source, len(texts), splits.valid, options,
                                                include_history, workers, seed)
    return scorer


@torch.no_grad()
def fit_compact(scorer: BlendScorer, source: FeatureSource, num_items: int, valid: EvalSplit, options: ScoreConfig,
                include_history: bool = False, workers: Workers = LOCAL, seed: int = 0) -> dict[str, Any]:
    """The served first stage of a calibrated scorer (:mod:`iisan.scoring.compact`): its maps
    to ``options.serve_width`` floats, fitted on the catalogue and the calibration users'
    queries, and its candidates, ``options.candidates`` or the fewest on
    :data:`~iisan.scoring.compact.CANDIDATE_GRID` whose criterion on those users is within
    :data:`~iisan.scoring.compact.TOLERANCE` of exact scoring's. Sets ``scorer.compact``
    (``None`` when the full vectors are no wider) and returns what was measured."""
    items = item_embeddings(scorer, source, num_items, workers)
    width = items.shape[1]
    if not 0 < options.serve_width < width:
        scorer.compact = None
        return {"width": width, "candidates": None}
    users = _calibration_users(len(valid.targets), items.shape[0], seed)
    stage = CompactStage(width, options.serve_width - len(PRIORS), len(PRIORS)).to(items.device)
    queries = torch.cat([scorer.user_vectors(items, valid.inputs[users[s : s + USER_CHUNK]])
                         for s in range(0, len(users), USER_CHUNK)])
    stage.fit(items, queries)
    grid = (options.candidates,) if options.candidates else CANDIDATE_GRID
    criteria = _served_criteria(scorer, stage, items, queries, valid, users, include_history, grid)
    exact = criteria.pop("exact")
    within = [m for m in grid if criteria[m] >= exact * (1 - TOLERANCE)]
    chosen = min(within) if within else max(grid)
    stage.candidates.fill_(chosen)
    scorer.compact = stage
    log.info("served first stage: %d of %d floats an item, %d candidates scored again exactly; valid %s %.4f "
             "(exact %.4f)", stage.width, width, chosen, SELECT_METRIC, criteria[chosen], exact)
    return {"width": stage.width, "full_width": width, "candidates": chosen, "valid_exact": exact,
            "valid_served": criteria[chosen], "tried": {str(m): criteria[m] for m in grid}}


def _served_criteria(scorer: BlendScorer, stage: CompactStage, items: torch.Tensor, queries: torch.Tensor,
                     valid: EvalSplit, users: np.ndarray, include_history: bool,
                     grid: tuple[int, ...]) -> dict[Any, float]:
    """The calibration criterion (the scorer's ``select``) of exact scoring (``"exact"``) and of
    the first stage's best ``m`` candidates scored again, for each ``m`` of ``grid``."""
    select = scorer.options.blend_select
    slices = slice_of(valid.target_counts[users]) if valid.target_counts is not None else None
    judged = ([slices == name for name in SLICE_NAMES if (slices == name).any()]
              if select == "balanced" and slices is not None else [np.ones(len(users), dtype=bool)])
    compact_items = stage.codes(items)
    ranks: dict[Any, list[torch.Tensor]] = {m: [] for m in ("exact", *grid)}
    for start in range(0, len(users), USER_CHUNK):
        chunk = users[start : start + USER_CHUNK]
        mine = queries[start : start + len(chunk)]
        scores = mine @ items.T
        scores[:, 0] = -torch.inf
        if not include_history:
            rows, cols = valid.history_pairs(chunk)
            device = items.device
            scores[torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)] = -torch.inf
        targets = torch.from_numpy(valid.targets[chunk]).to(items.device)
        codes = stage.query_codes(mine)
        ranks["exact"].append(pessimistic_ranks(scores, targets).cpu())
        for m in grid:
            ranks[m].append(pessimistic_ranks(served_scores(scores, codes, compact_items, m), targets).cpu())
    return {m: float(np.mean([metrics_from_ranks(torch.cat(r)[torch.from_numpy(mask)], (SELECT_K,))[SELECT_METRIC]
                              for mask in judged]))
            for m, r in ranks.items()}


@torch.no_grad()
def calibrate_blend(scorer: BlendScorer, source: FeatureSource, num_items: int, valid: EvalSplit,
                    include_history: bool = False, workers: Workers = LOCAL, seed: int = 0,
                    select: str = "overall", whiten: str = "auto") -> dict[str, Any]:
    """Fit ``scorer.blend``'s weights on ``valid`` by the ``select`` criterion (see the module). ``whiten``: the floor reads its content as it is (``off``), whitened
    on the catalogue (``on``,
    :meth:`~iisan.models.baselines.knn.FrozenContentItems.fit_whitening`), or the blend is
    fitted both ways and the one with the better criterion kept (``auto``; a tie keeps the
    content as it is).

    Under torchrun every rank computes the same (the catalogue is gathered, the users are
    not split), so every rank ends with the same weights.

    Returns:
        ``{"alpha": [a...], "priors": {"cold": [b...], "tail": [c...], "log_popularity": [g...]},
        "groups": {"used": G, "rare_share_bounds": [...], "users": [...]}, "select": s,
        "valid_before": x, "valid_together": y0, "valid_after": y, "users": U, "evaluations": n,
        "whitened": w}``: one weight per group of users (those beyond the ``G`` used are empty);
        ``valid_*``, the criterion on the calibration users without the blend, with one set of
        weights for every group, and with each group's own; ``auto`` adds
        ``"valid_whitened"`` and ``"valid_unwhitened"``, the criterion each way.
    """
    if select not in SELECTIONS:
        raise ConfigError(f"select must be one of {', '.join(SELECTIONS)}, got {select!r}")
    if whiten not in WHITENINGS:
        raise ConfigError(f"whiten must be one of {', '.join(WHITENINGS)}, got {whiten!r}")
    content = scorer.blend.content
    if content.terms is not None and not content.terms.fitted:  # else the floor would read zero words
        raise ValueError("the blend reads the texts' words but its term vectors are not fitted: call "
                         "scorer.blend.terms.fit(texts) first")

    def fit() -> dict[str, Any]:
        return _calibrate(scorer, source, num_items, valid, include_history, workers, seed, select)

    return choose_whitening(content, source, num_items, whiten, fit, scorer.blend, "blend")


def _calibrate(scorer: BlendScorer, source: FeatureSource, num_items: int, valid: EvalSplit,
               include_history: bool, workers: Workers, seed: int, select: str) -> dict[str, Any]:
    """The blend's weights fitted on ``valid`` with the floor's content as it stands."""
    blend = scorer.blend
    items = item_embeddings(scorer, source, num_items, workers)
    blend.fit_spread(items)
    users = _calibration_users(len(valid.targets), items.shape[0], seed)
    blend.alpha.fill_(1.0)  # the queries then carry h / sd_h as it is
    blend.priors.zero_()
    inputs = torch.from_numpy(valid.inputs[users]).to(items.device)
    used = blend.fit_groups(inputs)
    groups = blend.user_groups(inputs).cpu().numpy()
    slices = slice_of(valid.target_counts[users]) if valid.target_counts is not None else None
    judged = ([torch.from_numpy(slices == name) for name in SLICE_NAMES if (slices == name).any()]
              if select == "balanced" and slices is not None else [torch.ones(len(users), dtype=torch.bool)])
    members = [np.flatnonzero(groups == g) for g in range(blend.groups)]
    score = _Criterion(*_score_rows(scorer, items, valid, users, include_history),
                       items[:, blend.dim + blend.content.dim:], members, judged)
    none = ((0.0,) * (1 + len(PRIORS)),) * blend.groups
    together, best = fit_weights(score, blend.groups, used)
    blend.alpha.copy_(torch.tensor([w[0] for w in best]))
    blend.priors.copy_(torch.tensor([w[1:] for w in best]))
    result = {"alpha": [w[0] for w in best],
              "priors": {name: [w[1 + n] for w in best] for n, name in enumerate(PRIORS)},
              "groups": {"used": used, "users": [len(m) for m in members[:used]],
                         "rare_share_bounds": [round(float(b), 4) for b in blend.group_bounds[:used - 1]]},
              "select": select, "valid_before": score(none), "valid_together": score(together),
              "valid_after": score(best), "users": len(users), "evaluations": len(score.group_ranks)}
    log.info("blend: alpha %s, priors %s per group of users; valid %s (%s) %.4f -> %.4f (%d users, %d group "
             "settings tried)", result["alpha"], result["priors"], SELECT_METRIC, select,
             result["valid_before"], result["valid_after"], len(users), len(score.group_ranks))
    return result


def fit_weights(score: Callable[[Any], float], groups: int, used: int) -> tuple[Any, Any]:
    """The blend's weights per group by coordinate ascent on ``score`` from the trained score
    alone: every group's weights moved together, then each of the first ``used`` groups' on
    its own from there. Returns both settings (together, then the final one)."""
    none = ((0.0,) * (1 + len(PRIORS)),) * groups
    together = _ascend(score, none, lambda setting, change: tuple(change(w) for w in setting))
    best = together
    if used > 1:
        for group in range(used):
            best = _ascend(score, best, lambda setting, change, g=group: tuple(
                change(w) if n == g else w for n, w in enumerate(setting)))
    return together, best


class _Undecided(NamedTuple):
    """Some scored users' undecided items (neither above nor below the target whatever the
    weights), padded to the longest row: their trained and floor scores ``[u, m]`` (padding
    -inf and 0), item ids (padding 0), the target's column among them, how many items are
    above the target under every setting, and the users' positions among the calibration users.
    Before :func:`_pad` blocks them, one user's: 1-D rows and plain numbers."""

    trained: torch.Tensor
    floor: torch.Tensor
    items: torch.Tensor
    target_at: torch.Tensor
    above: torch.Tensor
    positions: np.ndarray


class _Criterion:
    """The calibration criterion of a setting (one weight tuple per group of users): NDCG@10,
    or its mean over the ``judged`` subsets of users; each group's ranks under each weight
    tuple are computed once.

    A setting's score of an item minus the target's is linear in the weights, so its least
    and greatest values over the box the grids span bound it (:func:`_bounds`): items above
    the target whatever the weights are only counted, items below it whatever the weights are
    dropped, and a user with ten items always above scores 0 in every setting and is not
    scored at all. What is left, the undecided items of the users who can reach the top 10,
    is scored per setting, exactly as ranking every item would (the same sums, in the same
    order, element by element).

    Args:
        trained_rows, floor_rows, targets: per chunk of users, from :func:`_score_rows`.
        features: the items' prior features ``[N + 1, priors]``.
        members: per group, the positions of its users among the calibration users.
        judged: boolean masks over the calibration users whose NDCG@10 values are averaged.
    """

    def __init__(self, trained_rows: list[torch.Tensor], floor_rows: list[torch.Tensor],
                 targets: list[torch.Tensor], features: torch.Tensor, members: list[np.ndarray],
                 judged: list[torch.Tensor]) -> None:
        self.features, self.judged = features, judged
        self.users = sum(len(m) for m in members)
        group_of = np.empty(self.users, dtype=np.int64)
        for group, mine in enumerate(members):
            group_of[mine] = group
        kept: list[list[_Undecided]] = [[] for _ in members]  # per group, one unpadded row per scored user
        start = 0
        for trained, floor, target in zip(trained_rows, floor_rows, targets):
            least, greatest = _bounds(trained, floor, target, features)
            above = (least > BOUND_MARGIN).sum(dim=1)
            undecided = (least <= BOUND_MARGIN) & (greatest >= -BOUND_MARGIN)  # the target's own column too
            ranked = torch.isfinite(trained.gather(1, target[:, None])[:, 0])
            for row in torch.nonzero(ranked & (above < SELECT_K))[:, 0].tolist():
                items = torch.nonzero(undecided[row])[:, 0]
                kept[group_of[start + row]].append(_Undecided(
                    trained[row, items], floor[row, items], items, int(torch.searchsorted(items, target[row])),
                    int(above[row]), start + row))
            start += len(target)
        self.undecided = [_pad(users) for users in kept]
        self.positions = [np.concatenate([block.positions for block in blocks] or [np.zeros(0, dtype=np.int64)])
                          for blocks in self.undecided]
        self.group_ranks: dict[tuple[int, tuple[float, ...]], torch.Tensor] = {}
        self.tried: dict[tuple[tuple[float, ...], ...], float] = {}

    def ranks_of(self, group: int, weights: tuple[float, ...]) -> torch.Tensor:
        """The ranks of one group's scored users under one weight tuple."""
        if (group, weights) not in self.group_ranks:
            prior = self.features @ torch.tensor(weights[1:], dtype=self.features.dtype,
                                                 device=self.features.device)
            ranks = []
            for block in self.undecided[group]:
                scores = block.trained + weights[0] * block.floor + prior[block.items]
                target = scores.gather(1, block.target_at[:, None])
                ranks.append(block.above + (scores >= target).sum(dim=1) - 1)  # ties count against it
            self.group_ranks[group, weights] = torch.cat(ranks).cpu() if ranks else torch.zeros(0, dtype=torch.long)
        return self.group_ranks[group, weights]

    def __call__(self, setting: tuple[tuple[float, ...], ...]) -> float:
        if setting not in self.tried:
            ranks = torch.full((self.users,), MISS, dtype=torch.long)  # a miss: no user scored here hits
            for group, weights in enumerate(setting):
                ranks[self.positions[group]] = self.ranks_of(group, weights)
            self.tried[setting] = float(np.mean([metrics_from_ranks(ranks[users], (SELECT_K,))[SELECT_METRIC]
                                                 for users in self.judged]))
        return self.tried[setting]


def _bounds(trained: torch.Tensor, floor: torch.Tensor, targets: torch.Tensor,
            features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[U, N + 1]`` twice: the least and greatest value of each item's score minus the
    target's over the box the grids span, a sum of per-weight extremes (the difference is
    linear in each weight). Excluded items (-inf) are -inf in both."""
    least = trained - trained.gather(1, targets[:, None])
    greatest = least.clone()
    floor = floor - floor.gather(1, targets[:, None])
    low, high = min(GRIDS[0]) * floor, max(GRIDS[0]) * floor
    least += torch.minimum(low, high)
    greatest += torch.maximum(low, high)
    # The priors' part depends on the user only through the target's features: computed once
    # per distinct target row (a few hundred training counts), then gathered per user.
    rows, row_of = torch.unique(features[targets], dim=0, return_inverse=True)
    prior_least = torch.zeros(len(rows), features.shape[0], dtype=least.dtype, device=least.device)
    prior_greatest = torch.zeros_like(prior_least)
    for k, grid in enumerate(GRIDS[1:]):
        difference = features[:, k][None, :] - rows[:, k][:, None]
        low, high = min(grid) * difference, max(grid) * difference
        prior_least += torch.minimum(low, high)
        prior_greatest += torch.maximum(low, high)
    least += prior_least[row_of]
    greatest += prior_greatest[row_of]
    return least, greatest


def _pad(users: list[_Undecided]) -> list[_Undecided]:
    """Scored users' rows (one user each, unpadded) in blocks of :data:`BLOCK_USERS`, users with
    about as many undecided items together, so that padding costs little."""
    users = sorted(users, key=lambda user: len(user.items))
    blocks = []
    for start in range(0, len(users), BLOCK_USERS):
        trained, floor, items, target_at, above, positions = zip(*users[start : start + BLOCK_USERS])
        pad = torch.nn.utils.rnn.pad_sequence
        blocks.append(_Undecided(pad(trained, batch_first=True, padding_value=-torch.inf),
                                 pad(floor, batch_first=True), pad(items, batch_first=True),
                                 torch.tensor(target_at, device=items[0].device),
                                 torch.tensor(above, device=items[0].device), np.array(positions)))
    return blocks


def _ascend(score: Callable[[Any], float], start: Any, apply: Callable[[Any, Callable], Any]) -> Any:
    """Coordinate ascent from ``start``: for each weight in turn (the floor's, then each
    prior's), the grid value that scores best, ``apply(setting, change)`` giving the setting
    with ``change`` applied to the weights it moves; until a round changes nothing."""
    best = start
    for _ in range(MAX_ROUNDS):
        before = best
        for position, grid in enumerate(GRIDS):
            candidates = [apply(best, lambda w, v=value: w[:position] + (v,) + w[position + 1:])
                          for value in grid]
            best = max(candidates, key=lambda s: (score(s), s == best))  # ties keep the current
        if best == before:
            break
    return best


def _calibration_users(count: int, catalogue: int, seed: int) -> np.ndarray:
    """Which validation users calibrate: all, or a fixed random subset within the budget."""
    most = max(MIN_USERS, CALIBRATION_SCORES // (2 * catalogue))
    if count <= most:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=most, replace=False))


def _score_rows(scorer: BlendScorer, items: torch.Tensor, split: EvalSplit, users: np.ndarray,
                include_history: bool) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Per chunk of ``users``: the standardised trained and floor scores ``[chunk, N + 1]``
    (padding and, unless ``include_history``, the history at minus infinity in the trained
    row, so in every sum), and the targets."""
    blend = scorer.blend
    trained_items, content_items = blend.split(items)
    trained_rows, floor_rows, targets = [], [], []
    for start in range(0, len(users), USER_CHUNK):
        chunk = users[start : start + USER_CHUNK]
        query = scorer.user_vectors(items, split.inputs[chunk])  # [u / sd_u, h / sd_h, 0...] (alpha 1)
        trained = query[:, : blend.dim] @ trained_items.T
        floor = query[:, blend.dim : blend.dim + blend.content.dim] @ content_items.T
        trained[:, 0] = -torch.inf
        if not include_history:
            rows, cols = split.history_pairs(chunk)
            device = items.device
            trained[torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)] = -torch.inf
        trained_rows.append(trained)
        floor_rows.append(floor)
        targets.append(torch.from_numpy(split.targets[chunk]).to(items.device))
    return trained_rows, floor_rows, targets
