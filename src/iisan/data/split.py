"""Leave-one-out training samples and evaluation inputs, as whole-array numpy.

Per user with sequence ``seq`` (the whole history, or its last ``--keep-last`` items), and
``L`` the model's input length (``max_seq_len``):

- train: ``seq[:-2]``, every transition of it, as windows of at most ``L + 1`` items
  (left-padded with 0) whose ``L`` (input, next-item target) pairs are trained on:
  :attr:`Splits.train` cuts it into windows ending at its end, ``L`` items earlier, and so
  on (each transition in one window; one window a user when ``seq[:-2]`` fits in one, the
  reference protocol's one sample per user), :attr:`Splits.prefixes` makes one sample per
  target, its window ending there (RecBole's SASRec);
- valid: input = last ``L`` items of ``seq[:-2]``, target ``seq[-2]``,
  history (excluded from ranking by default) ``seq[:-2]``;
- test: input = last ``L`` items of ``seq[:-1]``, target ``seq[-1]``,
  history ``seq[:-1]``.
"""

from __future__ import annotations

import functools
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
class Windows:
    """Training samples as windows of ``flat``: sample ``r`` is the last ``width`` items of
    ``flat[start[r]:end[r]]``, left-padded with 0. Indexing with rows (an array or a slice)
    gives their ``[rows, width]`` item ids, built when a batch asks: a sample costs two
    integers, not ``width``, however long the histories."""

    flat: np.ndarray
    start: np.ndarray
    end: np.ndarray
    width: int

    def __len__(self) -> int:
        return len(self.end)

    def __getitem__(self, rows: np.ndarray | slice | list[int]) -> np.ndarray:
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        return last_items(self.flat, self.start[rows], self.end[rows], self.width)


@dataclass(frozen=True)
class Splits:
    train: Windows  # [S] windows of max_seq_len + 1 items: every training transition once
    valid: EvalSplit
    test: EvalSplit
    popularity: np.ndarray  # [N + 1] counts in the training parts

    @functools.cached_property
    def prefixes(self) -> Windows:
        """One window per training target, ending at it (``--samples prefixes``): built on
        first use, from the training parts validation already names."""
        return prefix_windows(self.valid.flat, self.valid.history_start, self.valid.history_end, self.train.width - 1)


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


def _ordered_windows(flat: np.ndarray, start: np.ndarray, count: np.ndarray, end_of, width: int) -> Windows:
    """``count[u]`` windows per user ``u``, the ``c``-th ending at ``end_of(u, c)``, ordered by
    ``c`` then user: for histories that fit in one window, the rows the reference protocol had."""
    user = np.repeat(np.arange(len(count)), count)
    cut, _ = positions_in_runs(user)
    order = np.lexsort((user, cut))
    user, cut = user[order], cut[order]
    return Windows(flat, start[user], end_of(user, cut), width)


def sequence_windows(flat: np.ndarray, start: np.ndarray, train_end: np.ndarray, max_seq_len: int) -> Windows:
    """Each user's training part ``flat[start:train_end]`` as windows of ``max_seq_len + 1``
    items ending at ``train_end``, ``train_end - max_seq_len``, ... while one holds a transition:
    consecutive windows share one item, so every transition is a target exactly once."""
    length = train_end - start
    count = np.maximum((length - 2) // max_seq_len + 1, 1)  # at least one, as a user of one item had
    return _ordered_windows(flat, start, count, lambda user, cut: train_end[user] - cut * max_seq_len,
                            max_seq_len + 1)


def prefix_windows(flat: np.ndarray, start: np.ndarray, train_end: np.ndarray, max_seq_len: int) -> Windows:
    """One window per training target with an item before it, ending at that target (its last
    ``max_seq_len`` items before it as input), as RecBole's SASRec trains: ordered by how far
    the target is from the end of the training part, then user (longest prefixes first)."""
    count = np.maximum(train_end - start - 1, 0)
    return _ordered_windows(flat, start, count, lambda user, cut: train_end[user] - cut, max_seq_len + 1)


def split_sequences(flat: np.ndarray, offsets: np.ndarray, max_seq_len: int, num_items: int) -> Splits:
    """Build every sample array from CSR sequences (``flat`` item ids, ``offsets [U + 1]``)."""
    flat = np.asarray(flat, dtype=np.int64)
    start, end = offsets[:-1], offsets[1:]
    train_end = end - 2
    in_train = np.arange(len(flat)) < np.repeat(train_end, end - start)
    popularity = np.bincount(flat[in_train], minlength=num_items + 1)
    return Splits(
        train=sequence_windows(flat, start, train_end, max_seq_len),
        valid=EvalSplit(last_items(flat, start, end - 2, max_seq_len), flat[end - 2], flat, start, end - 2,
                        popularity[flat[end - 2]]),
        test=EvalSplit(last_items(flat, start, end - 1, max_seq_len), flat[end - 1], flat, start, end - 1,
                       popularity[flat[end - 1]]),
        popularity=popularity,
    )
