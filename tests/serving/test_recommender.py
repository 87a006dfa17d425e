"""Recommender: history keys in, top-k keys out, consistent with evaluation."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from iisan.errors import ConfigError, IisanError, InputError, UnknownItemError, UnknownUserError
from iisan.serving.intake import iter_new_items, read_new_items
from iisan.serving.recommender import Recommender
from tests.conftest import png_bytes


@pytest.fixture(scope="module")
def recommender(tiny_run) -> Recommender:
    return Recommender.load(tiny_run)


def test_top_k_matches_the_evaluation_scores(recommender):
    split = recommender.parts.splits.test
    inputs = split.inputs[:1]
    history = [recommender.keys[i] for i in inputs[0] if i]
    got = recommender.recommend(history, k=5, exclude_seen=False)
    scores = (recommender.parts.scorer.user_vectors(recommender.embeddings, inputs) @ recommender.embeddings.T)[0]
    scores[0] = -torch.inf
    expected = torch.topk(scores, 5).indices.tolist()
    assert [key for key, _ in got] == [recommender.keys[i] for i in expected]
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)


def test_seen_items_are_excluded_by_default(recommender):
    history = recommender.keys[1:6]
    keys = [key for key, _ in recommender.recommend(history, k=recommender.parts.dataset.num_items)]
    assert not set(history) & set(keys)
    assert len(keys) == recommender.parts.dataset.num_items - 5  # everything else, once


def test_only_the_last_max_seq_len_items_matter(recommender):
    long = recommender.keys[1:30]
    short = long[-recommender.max_seq_len:]
    assert recommender.recommend(long, k=3, exclude_seen=False) == recommender.recommend(short, k=3, exclude_seen=False)


def test_unknown_keys_are_named_or_skipped(recommender):
    known = recommender.keys[1:4]
    with pytest.raises(UnknownItemError, match="'nope'"):
        recommender.recommend([*known, "nope"])
    assert recommender.recommend([*known, "nope"], skip_unknown=True) == recommender.recommend(known)
    with pytest.raises(ConfigError, match="no known item"):
        recommender.recommend(["nope"], skip_unknown=True)
    with pytest.raises(ConfigError, match="k must be positive"):
        recommender.recommend(known, k=0)


def test_titles_follow_keys(recommender):
    items = recommender.parts.dataset.items
    key = items["key"][7]
    assert recommender.item(key)["title"] == items["text"][7]
    assert not recommender.embeddings[0].any()  # padding row


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run: adding items writes to its index."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


def test_index_is_built_once_and_stored(run_copy):
    first = Recommender.load(run_copy)
    assert (run_copy / "index" / "index.json").is_file() and first.index.kind == "flat"
    again = Recommender.load(run_copy)  # read back, not recomputed: same rows bit for bit
    assert torch.equal(first.embeddings, again.embeddings)
    assert first.index_recall(queries=50)["recall@10"] == 1.0


def test_a_new_items_words_are_weighed_as_the_catalogues(tiny_multimodal, tmp_path):
    """In a run whose floor reads the texts' words (the default), an item added after
    training gets the term vector its text would have had in the catalogue."""
    from iisan.config import TrainConfig
    from iisan.training.loop import train

    dataset, cache = tiny_multimodal
    config = TrainConfig.for_method("iisan", epochs=1, train_batch_size=32, seed=1, eval_user_chunk=64,
                                    blend_groups=1)
    assert config.score.blend_terms > 0
    train(dataset, tmp_path / "run", config, cache_dir=cache)
    recommender = Recommender.load(tmp_path / "run")
    blend, twin = recommender.parts.scorer.blend, 3
    text = recommender.parts.dataset.items["text"][twin - 1]
    recommender.add_items([{"key": "new-twin", "text": text}])  # no image: the words do not need one
    start = recommender.parts.model.dim + blend.content.dim - blend.terms.dims
    words = recommender.embeddings[-1][start:-3]
    assert words.abs().sum() > 0
    assert torch.allclose(words, recommender.embeddings[twin][start:-3], atol=2e-3)
    assert torch.allclose(words, blend.terms.table[twin].float(), atol=2e-3)


def test_a_new_item_with_known_content_ranks_next_to_its_twin(run_copy):
    recommender = Recommender.load(run_copy)
    items = recommender.parts.dataset.items
    history = [recommender.keys[i] for i in recommender.parts.splits.test.inputs[0] if i]
    best_key = recommender.recommend(history, k=1)[0][0]
    row = items.filter(items["key"] == best_key).row(0, named=True)
    image = (recommender.parts.dataset.root / row["image"]).read_bytes() if row["image"] else None
    assert recommender.add_items([{"key": "new-twin", "text": row["text"], "image": image}]) == ["new-twin"]

    # The content tower places it at once: its embedding is its twin's content part (a new
    # item has no id offset, which the trained twin has).
    twin = recommender.ids[best_key]
    offset = recommender.parts.model.item.offsets.weight[twin].detach()
    assert offset.abs().sum() > 0
    # (up to the cache's float16 rounding: the new item's states come from the encoders directly)
    new, old = recommender.embeddings[-1], recommender.embeddings[twin]
    dim = recommender.parts.model.dim
    assert torch.allclose(new[:dim], old[:dim] - offset, atol=2e-3)
    # The blend's part: the same frozen content as its twin, and a new item is cold.
    blend = recommender.parts.scorer.blend
    assert torch.allclose(new[dim:-3], old[dim:-3], atol=2e-3)
    assert new[-3:].tolist() == [1.0, 0.0, 0.0]  # cold, not tail, log(1 + 0)
    assert old[-3:].tolist() == blend.prior_features(torch.tensor([twin]))[0].tolist()
    top = [key for key, _ in recommender.recommend(history, k=len(recommender.keys))]
    assert top.index("new-twin") < len(top) // 10
    assert recommender.item("new-twin")["title"] == row["text"]
    # Persisted: a fresh load knows the item and can use it in a history.
    reloaded = Recommender.load(run_copy)
    assert reloaded.num_items == recommender.num_items
    assert torch.allclose(reloaded.embeddings[-1], recommender.embeddings[-1])
    assert reloaded.recommend([*history, "new-twin"], k=2)


@pytest.mark.parametrize("items, message", [
    ([], "no items"),
    (["not a dict"], "expected an object"),
    ([{"text": "x"}], "key must be a non-empty string"),
    ([{"key": "a", "text": 5}], "text must be a string"),
    ([{"key": "a", "text": "x", "colour": "red"}], "unknown field colour"),
    ([{"key": "a"}], "neither text nor an image"),
    ([{"key": "a", "text": "x"}, {"key": "a", "text": "y"}], "keys given twice"),
    ([{"key": "a", "text": "x", "image": b"not an image"}], "not an image in a format"),
    ([{"key": "a", "text": "x", "image": 3}], "bytes or a file path"),
    ([{"key": "a", "text": "x", "image": "/no/such/file.png"}], "cannot read image"),
])
def test_bad_new_items_add_nothing(run_copy, items, message):
    recommender = Recommender.load(run_copy)
    before = recommender.num_items
    with pytest.raises(InputError, match=message):
        recommender.add_items(items)
    assert recommender.num_items == before and Recommender.load(run_copy).num_items == before


def test_existing_keys_and_decompression_bombs_are_refused(run_copy):
    recommender = Recommender.load(run_copy)
    with pytest.raises(InputError, match="already in the catalogue"):
        recommender.add_items([{"key": recommender.keys[1], "text": "x"}])
    bomb = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, format="PNG")  # ~12 KB on disk, 100 Mpx decoded
    assert len(bomb.getvalue()) < 100_000
    with pytest.raises(InputError, match="pixel limit"):
        recommender.add_items([{"key": "bomb", "text": "x", "image": bomb.getvalue()}])


def test_new_items_file_is_read_with_line_numbers(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    good = tmp_path / "new.jsonl"
    good.write_text('{"key": "n1", "text": "red lamp", "image": "a.png"}\n\n{"key": "n2", "text": "mug"}\n')
    items = read_new_items(good)
    assert [i["key"] for i in items] == ["n1", "n2"] and items[0]["image"] == png_bytes()  # read, bounded
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "n1"}\n{broken\n')
    with pytest.raises(InputError, match="bad.jsonl:2: not valid JSON"):
        read_new_items(bad)


def test_a_file_item_refused_when_vetted_is_named_by_its_line(run_copy, tmp_path):
    new = tmp_path / "new.jsonl"
    new.write_text('{"key": "n1", "text": "lamp"}\n\n{"key": "n2", "text": 5}\n')
    recommender = Recommender.load(run_copy)
    with pytest.raises(InputError, match=r"new\.jsonl:3 \('n2'\): text must be a string"):
        recommender.add_items(iter_new_items(new))
    assert Recommender.load(run_copy).num_items == recommender.num_items  # nothing added


def test_a_batch_answers_like_single_queries_and_isolates_errors(recommender):
    from iisan.config import Query

    keys = recommender.keys
    queries = [Query(keys[1:4], k=3), Query(["nope"]), Query(keys[5:12], k=7, exclude_seen=False),
               Query(user="nobody"), Query([*keys[3:6], "nope"], k=2, skip_unknown=True)]
    results = recommender.recommend_many(queries)

    def same(batched, single):  # batched matmuls may differ in the last float bits
        assert [k for k, _ in batched] == [k for k, _ in single]
        assert [s for _, s in batched] == pytest.approx([s for _, s in single], rel=1e-5)

    same(results[0], recommender.recommend(keys[1:4], k=3))
    assert isinstance(results[1], UnknownItemError)
    same(results[2], recommender.recommend(keys[5:12], k=7, exclude_seen=False))
    assert isinstance(results[3], IisanError)  # no such user (or no dataset): that query's error alone
    same(results[4], recommender.recommend(keys[3:6], k=2))


def test_recommendations_for_a_user_of_the_dataset(tiny_run, tmp_path):
    """issue 30: a known user by id, without rebuilding their history by hand."""
    import polars as pl
    from typer.testing import CliRunner

    from iisan.cli import app
    from iisan.run.files import read_run_config

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    recommender = Recommender.load(run)
    sequences = pl.read_parquet(Path(read_run_config(run)["dataset"]) / "sequences.parquet")
    user, items = sequences["user_key"][0], sequences["items"][0].to_list()
    assert recommender.history_of(user) == [recommender.keys[i] for i in items]
    with pytest.raises(UnknownUserError, match="unknown user 'nobody'"):
        recommender.history_of("nobody")
    by_user = CliRunner().invoke(app, ["recommend", str(run), "--user", user, "-k", "3", "--json"])
    by_history = CliRunner().invoke(app, ["recommend", str(run), "--history", ",".join(recommender.history_of(user)),
                                          "-k", "3", "--json"])
    assert by_user.exit_code == 0 and json.loads(by_user.stdout) == json.loads(by_history.stdout)
    both = CliRunner().invoke(app, ["recommend", str(run), "--user", user, "--history", "x"])
    assert both.exit_code == 2 and "one of them" in both.stderr


def test_one_query_type_refuses_a_bad_request_where_it_is_made():
    """The Python API, the command line and the HTTP body share iisan.config.Query: a bad
    request is one ConfigError when it is stated, before any model runs."""
    from iisan.config import Query

    with pytest.raises(ConfigError, match="k must be positive"):
        Query(("a",), k=0)
    with pytest.raises(ConfigError, match="give history .* or user"):
        Query()
    assert Query(["a", "b"]).history == ("a", "b") and Query(["a"]).exclude_seen
