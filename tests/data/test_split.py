import numpy as np

from iisan.data.split import last_items, prefix_samples, split_sequences


def test_leave_one_out_on_a_hand_example():
    # user 0: 1 2 3 4 5 6 ; user 1: 7 8 9 7 8
    flat = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 7, 8])
    offsets = np.array([0, 6, 11])
    splits = split_sequences(flat, offsets, max_seq_len=3, num_items=9)
    assert splits.train.tolist() == [[1, 2, 3, 4], [0, 7, 8, 9]]
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


def test_prefix_samples_hold_every_target_once_with_its_whole_prefix():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 7, size=40)  # up to a full window of 6 slots, one item alone too
    train = np.zeros((40, 6), dtype=np.int64)
    for row, n in enumerate(lengths):
        train[row, 6 - n:] = rng.integers(1, 50, size=n)
    expected = sorted(  # a loop: each target after at least one item, its prefix left-padded
        tuple([0] * (6 - end) + list(train[row, 6 - n:][:end]))
        for row, n in enumerate(lengths) for end in range(2, n + 1))
    samples = prefix_samples(train)
    assert sorted(map(tuple, samples.tolist())) == expected
    assert len(samples) == (lengths - 1).sum()
