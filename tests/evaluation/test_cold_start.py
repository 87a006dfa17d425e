"""The item cold-start protocol: held out at prepare, added after training, ranked for their users."""

from __future__ import annotations

import json

import polars as pl
import pytest

from iisan.cache.encode import encode
from iisan.config import PrepareConfig, TrainConfig
from iisan.data import prepare
from iisan.data.cold_start import COLD_ITEMS_FILE, COLD_START_FILE, hold_out, newest_items
from iisan.data.dataset import PreparedDataset
from iisan.data.synth import SynthConfig, synthesize
from iisan.errors import ConfigError
from iisan.run_metrics import evaluate_cold_start
from iisan.training.loop import train
from tests.multimodal_data import TINY_ENCODE


def _interactions(sequences: dict[str, list[str]]) -> pl.DataFrame:
    rows = [(user, item, run) for run, (user, items) in enumerate(sequences.items()) for item in items]
    return pl.DataFrame(rows, schema={"user": pl.String, "item": pl.String, "run": pl.Int64}, orient="row")


def test_newest_items_are_the_ones_bought_last():
    inter = _interactions({"u1": ["a", "b", "c"], "u2": ["a", "c", "d"], "u3": ["b", "d"]})
    # Mean relative positions: a 0, b 0.25, c 0.75, d 1.
    assert newest_items(inter, 0.5).to_list() == ["d", "c"]
    assert newest_items(inter, 0.01).to_list() == ["d"]  # at least one


def test_hold_out_removes_every_interaction_and_keeps_the_users_whose_last_item_it_was():
    inter = _interactions({"u1": ["a", "x", "b"], "u2": ["a", "b", "x"], "u3": ["x", "a"]})
    kept, users = hold_out(inter, pl.Series(["x"]))
    assert "x" not in kept["item"].to_list() and kept.height == inter.height - 3
    assert users.rows() == [("u2", ["a", "b"], "x")]


@pytest.fixture(scope="module")
def cold_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("cold")
    synthesize(root / "src", SynthConfig(items=120, users=150, categories=4, colours=3, image_size=24,
                                         missing_image_rate=0.1, seed=5))
    prepare(root / "src", root / "ds", PrepareConfig(format="iisan-tsv", keep_last=8, cold_items=0.15))
    encode(root / "ds", root / "cache", TINY_ENCODE)
    return root / "ds", root / "cache"


def test_prepare_writes_held_out_items_that_training_never_sees(cold_dataset):
    dataset = PreparedDataset.load(cold_dataset[0])  # the new files are hash-checked like the others
    cold = pl.read_parquet(dataset.root / COLD_ITEMS_FILE)
    users = pl.read_parquet(dataset.root / COLD_START_FILE)
    assert dataset.meta["counts"]["cold_items"] == cold.height == 18  # 15% of 120
    assert dataset.meta["counts"]["cold_start_users"] == users.height > 0
    assert not set(cold["key"]) & set(dataset.items["key"])
    assert set(users["target"]) <= set(cold["key"])
    assert users["history"].explode().max() <= dataset.num_items
    images = cold["image"].drop_nulls()
    assert images.len() > 0 and all((dataset.root / path).is_file() for path in images)


def test_cold_start_adds_the_items_to_a_copy_and_ranks_them(cold_dataset, tmp_path):
    dataset, cache = cold_dataset
    run = tmp_path / "run"
    train(dataset, run, TrainConfig(epochs=1, train_batch_size=32, seed=1), cache_dir=cache)
    index_before = sorted(p.name for p in (run / "index").iterdir())
    result = evaluate_cold_start(run, ks=(5, 10))
    users = pl.read_parquet(dataset / COLD_START_FILE).height
    assert result["users"] == users and result["new_items"] == 18
    assert result["items"] == PreparedDataset.load(dataset).num_items + 18
    assert 0 <= result["metrics"]["ndcg@10"] <= result["metrics"]["hr@10"] <= 1
    assert sorted(p.name for p in (run / "index").iterdir()) == index_before  # the run is unchanged
    recorded = json.loads((run / "metrics.json").read_text())["cold_start"]
    assert recorded["users"] == users and recorded["ndcg@10"] == result["metrics"]["ndcg@10"]
    # How the lists treat the added items: a hit is one of them in the top 10, so a user
    # with a hit is shown one.
    reach = result["exposure"]
    assert reach["catalogue"] == round(18 / result["items"], 4) and recorded["exposure@10"] == reach
    assert 0 <= reach["places"] <= 1 and reach["users_shown_one"] >= result["metrics"]["hr@10"]

    from typer.testing import CliRunner

    from iisan.cli import app

    table = CliRunner().invoke(app, ["evaluate", str(run), "--cold-start", "--k", "5,10"])
    words = " ".join(table.stdout.split())  # rich wraps at the console's width, the run's path first
    assert table.exit_code == 0 and f"{users:,} users whose next item was one of 18 added" in words
    assert f"{result['metrics']['ndcg@10']:.4f}" in table.stdout  # the same ranking again
    assert f"the added items take {reach['places']:.1%} of the places" in words


def test_cold_start_on_a_dataset_without_held_out_items_says_how(tiny_run):
    with pytest.raises(ConfigError, match="--cold-items"):
        evaluate_cold_start(tiny_run)
