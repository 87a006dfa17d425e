import numpy as np

from iisan.data.split import last_items, split_sequences


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
