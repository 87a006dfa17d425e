"""Term vectors: hashed TF-IDF over words and pairs of words, the same in every process."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from iisan.models.terms import TermVectors, term_hash, terms_of


def test_terms_are_lower_cased_words_and_adjacent_pairs_with_counts():
    assert terms_of("Gap Gauge, gap 0.02mm") == {"gap": 2, "gauge": 1, "0": 1, "02mm": 1, "gap gauge": 1,
                                                  "gauge gap": 1, "gap 0": 1, "0 02mm": 1}
    assert terms_of(None) == {} == terms_of("  ,, ")


def test_the_hash_does_not_depend_on_the_process():
    """Saved runs hold frequencies by hash bucket: another process (another PYTHONHASHSEED)
    must hash every term alike."""
    code = "from iisan.models.terms import term_hash; print(term_hash('uxcell gauge'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert int(other.stdout) == term_hash("uxcell gauge")


def test_each_term_weighs_its_sublinear_count_times_its_idf():
    texts = ["blue pen", "blue cup", "blue hat", "uxcell blue uxcell"]
    vectors = TermVectors(len(texts), 256)
    vectors.fit(texts)
    row = vectors.table[4].float()
    n = len(texts)

    def idf(df):  # ln((1 + n) / (1 + df)) + 1
        return math.log((1 + n) / (1 + df)) + 1

    # terms: uxcell (twice, in 1 text), blue (4 texts), "uxcell blue" and "blue uxcell" (1 text each)
    weights = torch.tensor([(1 + math.log(2)) * idf(1), idf(4), idf(1), idf(1)])
    expected = sorted((weights / weights.norm()).tolist())
    assert sorted(row[row != 0].abs().tolist()) == pytest.approx(expected, abs=2e-3)  # float16 table
    assert row.norm() == pytest.approx(1.0, abs=2e-3)


def test_shared_rare_words_count_more_than_shared_common_ones():
    texts = ["uxcell pen", "blue pen", "blue cup", "blue hat", "uxcell cup"]  # uxcell in 2 texts, blue in 3
    vectors = TermVectors(len(texts), 512)
    vectors.fit(texts)
    scores = vectors.table.float() @ vectors.embed(["uxcell blue"])[0]
    assert scores[1] > scores[2] > 0  # one shared word each, built alike: the rarer scores higher
    assert scores[0] == 0  # padding


def test_new_texts_get_the_catalogues_vectors_and_unknown_ids_none():
    texts = ["uxcell feeler gauge", "lead screw 8mm", None, "feeler gauge set"]
    vectors = TermVectors(len(texts), 128)
    with pytest.raises(RuntimeError, match="before fit"):
        vectors.embed(["x"])
    vectors.fit(texts)
    assert torch.allclose(vectors.embed(texts), vectors.table[1:].float(), atol=1e-3)
    assert vectors.table[3].abs().sum() == 0  # no text: no words
    assert vectors(torch.tensor([0, 2, 5, 99])).abs().sum(dim=1).tolist()[::2] == [0, 0]  # padding, beyond
    with pytest.raises(ValueError, match="3 texts for a catalogue of 4"):
        vectors.fit(texts[:3])


def test_the_catalogue_table_is_made_from_the_texts_not_saved():
    """The saved weights hold the frequencies; the table is a function of them and the texts,
    made again where the catalogue is embedded (the index keeps the vectors once)."""
    texts = ["uxcell gap gauge 0.02mm", "blue pen", None, "gap gauge set"]
    fitted = TermVectors(len(texts), 32)
    fitted.fit(texts)
    saved = fitted.state_dict()
    assert set(saved) == {"df", "documents"}
    loaded = TermVectors(len(texts), 32)
    loaded.load_state_dict(saved)
    with pytest.raises(RuntimeError, match="fill"):
        loaded(torch.tensor([1]))
    loaded.fill(texts)
    assert torch.equal(loaded.table, fitted.table)
    with pytest.raises(ValueError, match="3 texts for a catalogue of 4"):
        loaded.fill(texts[:3])
