"""Issue 48: a user's whole history is prepared, trained on and excluded when serving, while
the model reads at most its input length of it."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from iisan.cli import app
from iisan.serving.service import create_app
from iisan.serving.recommender import Recommender
from tests.conftest import write_tsv_source

runner = CliRunner()
ITEMS = 30


@pytest.fixture(scope="module")
def long_histories_run(tmp_path_factory) -> tuple[Recommender, list[str]]:
    """An id run over users who saw 24 of 30 items each (twice the reference protocol's 13),
    read 3 at a time; the second value is user ``u0``'s whole history."""
    root = tmp_path_factory.mktemp("long")
    keys = [f"i{n}" for n in range(ITEMS)]
    users = [f"u{u}\t" + " ".join(keys[(u + 7 * j) % ITEMS] for j in range(24)) for u in range(40)]
    write_tsv_source(root / "src", {key: f"title {key}" for key in keys}, users)
    prepared = runner.invoke(app, ["prepare", str(root / "src"), "-f", "iisan-tsv", "-o", str(root / "ds"), "--json"])
    assert prepared.exit_code == 0, prepared.output
    assert json.loads(prepared.stdout)["counts"]["interactions"] == 40 * 24  # nothing cut
    trained = runner.invoke(app, ["train", str(root / "ds"), "--method", "id", "--epochs", "1", "--max-seq-len", "3",
                                  "--out", str(root / "run"), "--json"])
    assert trained.exit_code == 0, trained.output
    recommender = Recommender.load(root / "run")
    assert recommender.max_seq_len == 3
    return recommender, recommender.history_of("u0")


def test_a_user_is_known_by_their_whole_history(long_histories_run):
    recommender, history = long_histories_run
    assert len(history) == 24 and len(set(history)) == 24


def test_recommending_for_a_user_excludes_everything_they_saw(long_histories_run):
    recommender, history = long_histories_run
    unseen = sorted(set(recommender.keys[1:]) - set(history))
    by_user = runner.invoke(app, ["recommend", str(recommender.run_dir), "--user", "u0", "-k", "10", "--json"])
    assert by_user.exit_code == 0, by_user.output
    assert sorted(row["key"] for row in json.loads(by_user.stdout)) == unseen  # the 6 it never saw
    assert sorted(key for key, _ in recommender.recommend(user="u0", k=10)) == unseen
    by_get = TestClient(create_app(recommender)).get("/users/u0/recommendations", params={"k": 10})
    assert by_get.status_code == 200 and sorted(row["key"] for row in by_get.json()["items"]) == unseen
    # the window alone (the last 3) would have let the 21 items before it back in
    window_only = recommender.recommend(history[-3:], k=10)
    assert {key for key, _ in window_only} & set(history[:-3])


def test_only_the_input_window_moves_the_scores(long_histories_run):
    recommender, history = long_histories_run
    whole = recommender.recommend(history, k=6, exclude_seen=False)
    window = recommender.recommend(history[-3:], k=6, exclude_seen=False)
    assert [key for key, _ in whole] == [key for key, _ in window]
    assert [score for _, score in whole] == pytest.approx([score for _, score in window])
