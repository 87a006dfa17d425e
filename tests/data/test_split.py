import numpy as np

from iisan.data.split import last_items, split_sequences


def test_leave_one_out_on_a_hand_example():
    # user 0: 1 2 3 4 5 6 ; user 1: 7 8 9 7 8
    flat = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 7, 8])
    offsets = np.array([0, 6, 11])
    splits = split_sequences(flat, offsets, max_seq_len=3, num_items=9)
    assert splits.train[:].tolist() == [[1, 2, 3, 4], [0, 7, 8, 9]]
    assert splits.prefixes[:].tolist() == [[1, 2, 3, 4], [0, 7, 8, 9], [0, 1, 2, 3], [0, 0, 7, 8], [0, 0, 1, 2]]
    assert splits.valid.inputs.tolist() == [[2, 3, 4], [7, 8, 9]]
    assert splits.valid.targets.tolist() == [5, 7]
    assert splits.test.inputs.tolist() == [[3, 4, 5], [8, 9, 7]]
    assert splits.test.targets.tolist() == [6, 8]
    rows, items = splits.test.history_pairs(np.array([1]))
    assert rows.tolist() == [0, 0, 0, 0] and items.tolist() == [7, 8, 9, 7]
    # Popularity counts the training parts only (seq[:-2]).
    assert splits.popularity.tolist() == [0, 1, 1, 1, 1, 0, 0, 1, 1, 1]


def test_last_items_pads_on_the_left():
    flat = np.array([5, 6, 7])
    assert last_items(flat, np.array([0, 2]), np.array([3, 3]), 4).tolist() == [[0, 5, 6, 7], [0, 0, 0, 7]]


def test_a_long_history_is_trained_whole_in_windows_of_the_input_length():
    # one user, items 1..10: the training part is 1..8 (9 and 10 are valid and test targets)
    splits = split_sequences(np.arange(1, 11), np.array([0, 10]), max_seq_len=3, num_items=10)
    # windows of 4 ending at 8, 5, 2: each of the 7 transitions is a target once
    assert splits.train[:].tolist() == [[5, 6, 7, 8], [2, 3, 4, 5], [0, 0, 1, 2]]
    # a window per target, its last 3 items before it as input, the latest first
    assert splits.prefixes[:].tolist() == [[5, 6, 7, 8], [4, 5, 6, 7], [3, 4, 5, 6], [2, 3, 4, 5],
                                           [1, 2, 3, 4], [0, 1, 2, 3], [0, 0, 1, 2]]
    assert splits.valid.inputs.tolist() == [[6, 7, 8]] and splits.test.inputs.tolist() == [[7, 8, 9]]
    rows, items = splits.test.history_pairs(np.array([0]))
    assert items.tolist() == list(range(1, 10))  # the whole history is excluded, not the window


def random_sequences(users: int, longest: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, longest + 1, size=users)
    return rng.integers(1, 50, size=lengths.sum()), np.concatenate([[0], np.cumsum(lengths)])


def transitions(windows: np.ndarray, last_only: bool) -> list[tuple[int, ...]]:
    """(the input before the target, the target) of each sample's trained positions."""
    width = windows.shape[1]
    positions = [width - 1] if last_only else range(1, width)
    return sorted((*row[:p], row[p]) for row in windows.tolist() for p in positions if row[p] and row[p - 1])


def test_every_training_transition_is_a_target_once_in_both_sample_kinds():
    flat, offsets = random_sequences(60, 40)
    splits = split_sequences(flat, offsets, max_seq_len=6, num_items=50)
    expected = sorted(  # a loop: each target after at least one item, with its last 6 items before it
        tuple([0] * (6 - len(flat[max(a, t - 6):t])) + flat[max(a, t - 6):t].tolist() + [flat[t]])
        for a, b in zip(offsets[:-1], offsets[1:]) for t in range(a + 1, b - 2))
    assert transitions(splits.prefixes[:], last_only=True) == expected
    # in a window, a target sees fewer items before it: compare (item before, target) pairs
    trained = transitions(splits.train[:], last_only=False)
    assert sorted((t[-2], t[-1]) for t in trained) == sorted((t[-2], t[-1]) for t in expected)


def test_histories_that_fit_one_window_give_the_reference_protocols_samples():
    """Data cut to the last max_seq_len + 3 items trains on exactly the arrays it always did:
    one window per user, and the per-cut prefixes (RecBole's SASRec) in the same order."""
    flat, offsets = random_sequences(50, 6 + 3)
    splits = split_sequences(flat, offsets, max_seq_len=6, num_items=50)
    windows = last_items(flat, offsets[:-1], offsets[1:] - 2, 7)
    assert np.array_equal(splits.train[:], windows)
    rows = []
    for cut in range(6):  # drop each window's last `cut` items, keep those with a target and an item before
        shifted = np.zeros_like(windows)
        shifted[:, cut:] = windows[:, : 7 - cut]
        rows.append(shifted[(shifted[:, -1] != 0) & (shifted[:, -2] != 0)])
    assert np.array_equal(splits.prefixes[:], np.concatenate(rows))
    assert splits.train[[1, 0]].tolist() == windows[[1, 0]].tolist()  # rows in any order, as batches ask
