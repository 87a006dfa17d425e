"""A run folder is an artefact: moved elsewhere, with its dataset and cache deleted, it still
recommends and takes new items (which need only the encoders)."""

from __future__ import annotations

import shutil

import pytest

from iisan.errors import DatasetError
from iisan.search import HnswSettings
from iisan.serving.recommender import Recommender
from tests.reliability.conftest import cli, one_line_error


def test_a_moved_run_recommends_without_its_dataset_and_cache(scratch, tmp_path):
    before = Recommender.load(scratch.run)
    history = before.keys[1:4]
    expected = before.recommend(history, k=5)
    assert (scratch.run / "items.parquet").is_file() and (scratch.run / "index" / "index.json").is_file()

    moved = tmp_path / "elsewhere" / "run"
    shutil.move(scratch.run, moved)
    shutil.rmtree(scratch.dataset)
    shutil.rmtree(scratch.cache)

    recommender = Recommender.load(moved)
    assert recommender.recommend(history, k=5) == expected
    assert recommender.item(history[0])["title"] == before.item(history[0])["title"]
    recommender.add_items([{"key": "fresh", "text": "a brand new item"}])
    assert "fresh" in Recommender.load(moved).ids
    result = cli("recommend", moved, "--history", ",".join(history), "-k", "3")
    assert result.exit_code == 0, result.output
    # Embedding the whole catalogue again is the one thing that needs them back:
    with pytest.raises(DatasetError, match="needs the run's dataset and cache"):
        recommender.store.rebuild("flat", HnswSettings())
    one_line_error(cli("index", "build", moved), "needs the run's dataset and cache", "config.json")


def test_a_damaged_catalogue_file_is_one_clear_error(scratch):
    (scratch.run / "items.parquet").write_bytes(b"PAR1 nonsense")
    one_line_error(cli("recommend", scratch.run, "--history", "x"), "items.parquet", "damaged")
