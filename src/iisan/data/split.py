"""Leave-one-out training samples and evaluation inputs, as whole-array numpy.

Per user with kept sequence ``seq`` (at most ``max_seq_len + 3`` items):

- train: ``seq[:-2]``; its last ``max_seq_len + 1`` items, left-padded with 0, give
  ``max_seq_len`` (input, next-item target) pairs (one sample per user, a target at every
  position; :func:`prefix_samples` makes one sample per pair instead);
- valid: input = last ``max_seq_len`` items of ``seq[:-2]``, target ``seq[-2]``,
  history (excluded from ranking by default) ``seq[:-2]``;
- test: input = last ``max_seq_len`` items of ``seq[:-1]``, target ``seq[-1]``,
  history ``seq[:-1]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EvalSplit:
    """Inputs ``[U, max_seq_len]`` (left-padded), targets ``[U]``, each user's history
    as a range ``flat[history_start[u]:history_end[u]]``, and how often each target occurs
    in the training part (``target_counts [U]``, what :mod:`iisan.evaluation.slices` reads;
    ``None`` when unknown)."""

    inputs: np.ndarray
    targets: np.ndarray
    flat: np.ndarray
    history_start: np.ndarray
    history_end: np.ndarray
    target_counts: np.ndarray | None = None

    def history_pairs(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(row, item)`` pairs of the given users' histories; ``row`` indexes ``users``."""
        starts, ends = self.history_start[users], self.history_end[users]
        lengths = ends - starts
        rows = np.repeat(np.arange(len(users)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return rows, self.flat[np.repeat(starts, lengths) + offsets]


@dataclass(frozen=True)
class Splits:
    train: np.ndarray  # [U, max_seq_len + 1] item ids, left-padded
    valid: EvalSplit
    test: EvalSplit
    popularity: np.ndarray  # [N + 1] counts in the training parts


def positions_in_runs(run: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows grouped in contiguous runs (one per user): each row's position in its run
    and its run's length, both ``[rows]``."""
    starts = np.flatnonzero(np.diff(run, prepend=-1))
    lengths = np.diff(np.append(starts, run.size))
    return np.arange(run.size) - np.repeat(starts, lengths), np.repeat(lengths, lengths)


def last_items(flat: np.ndarray, start: np.ndarray, end: np.ndarray, width: int) -> np.ndarray:
    """The last ``width`` items of ``flat[start:end]`` per row, left-padded with 0: ``[rows, width]``."""
    positions = end[:, None] - width + np.arange(width)[None, :]
    valid = positions >= start[:, None]
    return np.where(valid, flat[np.clip(positions, 0, max(len(flat) - 1, 0))], 0).astype(np.int64)


def prefix_samples(train: np.ndarray) -> np.ndarray:
    """One row per (prefix, next item) pair of the training windows, as RecBole's SASRec
    trains: the window cut after each target and left-padded again, so the target sits in
    the last slot. ``[U, L + 1]`` -> ``[P, L + 1]``, P the number of targets with at least
    one item before them; rows ordered by prefix length, longest first."""
    width = train.shape[1]
    rows = []
    for cut in range(width - 1):  # drop the last `cut` items of every window
        shifted = np.zeros_like(train)
        shifted[:, cut:] = train[:, : width - cut]
        rows.append(shifted[(shifted[:, -1] != 0) & (shifted[:, -2] != 0)])
    return np.concatenate(rows)


def split_sequences(flat: np.ndarray, offsets: np.ndarray, max_seq_len: int, num_items: int) -> Splits:
    """Build every sample array from CSR sequences (``flat`` item ids, ``offsets [U + 1]``)."""
    flat = np.asarray(flat, dtype=np.int64)
    start, end = offsets[:-1], offsets[1:]
    train_end = end - 2
    in_train = np.arange(len(flat)) < np.repeat(train_end, end - start)
    popularity = np.bincount(flat[in_train], minlength=num_items + 1)
    return Splits(
        train=last_items(flat, start, train_end, max_seq_len + 1),
        valid=EvalSplit(last_items(flat, start, end - 2, max_seq_len), flat[end - 2], flat, start, end - 2,
                        popularity[flat[end - 2]]),
        test=EvalSplit(last_items(flat, start, end - 1, max_seq_len), flat[end - 1], flat, start, end - 1,
                       popularity[flat[end - 1]]),
        popularity=popularity,
    )
