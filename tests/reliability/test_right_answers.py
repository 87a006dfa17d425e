"""Right answers, no 500s (issue 46, point 3): a repeated key is refused, out-of-range query
strings are the client's 422, concurrent first additions do not race, and user data is shown
verbatim, never read as markup."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import polars as pl
import pytest
from fastapi.testclient import TestClient
from rich.console import Console

from iisan.report import terminal
from iisan.serving.recommender import Recommender
from iisan.serving.service import create_app
from tests.conftest import write_tsv_source
from tests.reliability.conftest import cli, one_line_error


def test_a_catalogue_that_repeats_a_key_is_one_clear_error(scratch):
    items = pl.read_parquet(scratch.run / "items.parquet")
    repeated = items.with_columns(pl.when(pl.col("item_id") <= 3).then(pl.lit("same")).otherwise(pl.col("key"))
                                  .alias("key"))
    repeated.write_parquet(scratch.run / "items.parquet")
    one_line_error(cli("recommend", scratch.run, "--history", items["key"][5]), "repeats item keys", "'same'")


def test_user_recommendations_with_bad_query_strings_are_the_clients_422(scratch):
    client = TestClient(create_app(Recommender.load(scratch.run)), raise_server_exceptions=False)
    for params in ({"k": 0}, {"k": -3}, {"k": 10**9}, {"k": "many"}):
        response = client.get("/users/u1/recommendations", params=params)
        assert response.status_code == 422, (params, response.text)
    assert client.get("/users/" + "u" * 5_000 + "/recommendations").status_code == 422  # over the key limit
    assert client.get("/users/u1/recommendations", params={"k": 0}).json()["detail"]


CONCURRENT_ADDS = """
import json, sys, threading
from iisan.serving.recommender import Recommender
recommender = Recommender.load(sys.argv[1])  # a fresh process: no encoder loaded, transformers not imported
image = open(sys.argv[2], "rb").read()
results = [None] * 8
def add(n):
    try:
        results[n] = recommender.add_items([{"key": f"new-{n}", "text": f"a new item {n}", "image": image}])
    except Exception as err:
        results[n] = f"{type(err).__name__}: {err}"
threads = [threading.Thread(target=add, args=(n,)) for n in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(results))
"""


def test_concurrent_first_additions_all_succeed(scratch):
    image = scratch.dataset / pl.read_parquet(scratch.dataset / "items.parquet")["image"].drop_nulls()[0]
    done = subprocess.run([sys.executable, "-c", CONCURRENT_ADDS, str(scratch.run), str(image)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [[f"new-{n}"] for n in range(8)]
    assert {f"new-{n}" for n in range(8)} <= set(Recommender.load(scratch.run).ids)


def rendered(renderable) -> str:
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(renderable, highlight=False)  # markup on: the renderings must not hand it any
    return console.export_text()


def test_keys_and_titles_holding_markup_are_shown_as_they_are():
    rows = [{"key": "[/k]", "title": "[bold red]Loud[/] title", "score": 1.0},
            {"key": "[link=x]k2", "title": None, "score": 0.5}]
    text = rendered(terminal.recommended(rows, 2))
    assert "[/k]" in text and "[bold red]Loud[/] title" in text and "[link=x]k2" in text
    assert "[/k]" in rendered(terminal.lines("wrote [/k]"))


def test_prepare_and_stats_show_problem_rows_with_markup_verbatim(tmp_path):
    items = {"[/k]": "[bold]Title one", "i2": "Two [red]", "i3": "Three", "i4": "Four", "i5": "Five", "i6": "Six"}
    users = ["u1\t[/k] i2 i3 i4 i5 i6", "u2\ti2 i3 i4 [/k] i5 i6", "u3\ti9 [/x] i2 i3 i4 i5 i6",
             "u4\t[/k] i3 i4 i2 i6 i5"]
    source = write_tsv_source(tmp_path / "src", items, users)
    prepared = cli("prepare", source, "-f", "iisan-tsv", "-o", tmp_path / "ds")
    assert prepared.exit_code == 0, prepared.output
    assert "[/x]" in prepared.stdout  # the unknown key, in the problems table as it was written
    stats = cli("data", "stats", tmp_path / "ds")
    assert stats.exit_code == 0, stats.output
    assert "[/k]" in stats.stdout and "[bold]Title one" in stats.stdout


def test_error_bodies_name_the_run_never_the_servers_paths(scratch):
    from iisan.fileio import write_json_atomic

    recommender = Recommender.load(scratch.run)
    client = TestClient(create_app(recommender), raise_server_exceptions=False)
    key = recommender.keys[1]
    assert client.post("/recommend", json={"history": [key], "k": 2}).status_code == 200
    config = scratch.run / "config.json"
    write_json_atomic(config, json.loads(config.read_text()))  # what a new training does to it
    recommender.store._checked = 0.0
    answer = client.post("/recommend", json={"history": [key], "k": 2})
    health = client.get("/health")
    assert answer.status_code == 503 and health.status_code == 503
    for text in (answer.text, health.text):
        assert "replaced on disk" in text and str(scratch.run.parent) not in text and "/tmp" not in text


@pytest.mark.parametrize("edit, named", [
    (lambda train: train.update(epochs="ten"), "epochs must be a whole number"),
    (lambda train: train.update(lr=True), "lr must be a number"),
    (lambda train: train.update(bogus=1), "bogus is not an option"),
    (lambda train: train.update(side=5), "not an object"),
    (lambda train: train.update(score={"blend_groups": "x"}), "blend_groups must be a whole number"),
])
def test_a_saved_option_of_the_wrong_type_or_name_is_one_line(scratch, edit, named):
    config = json.loads((scratch.run / "config.json").read_text())
    edit(config["train"])
    (scratch.run / "config.json").write_text(json.dumps(config))
    one_line_error(cli("recommend", scratch.run, "--history", "x"), "config.json", named)


def test_a_csv_header_that_repeats_a_column_is_one_line(tmp_path):
    (tmp_path / "events.csv").write_text("user,item,timestamp,item\nu1,i1,1,x\nu1,i2,2,y\n")
    (tmp_path / "items.csv").write_text("item,title\ni1,a\ni2,b\n")
    result = cli("prepare", tmp_path / "events.csv", "-f", "csv", "--items", tmp_path / "items.csv", "-o", tmp_path / "ds")
    one_line_error(result, "events.csv", "'item' more than once")


def test_a_json_line_nested_too_deep_is_one_line(scratch, tmp_path):
    deep = '{"a":' * 50_000 + "1" + "}" * 50_000
    items = tmp_path / "new.jsonl"
    items.write_text(json.dumps({"key": "k1", "text": "t"}) + "\n" + deep + "\n")
    one_line_error(cli("items", "add", scratch.run, items), "new.jsonl:2", "nested too deep")


@pytest.mark.parametrize("damage", [
    lambda meta: meta["param_groups"][0].update(lr="fast"),
    lambda meta: meta["param_groups"][0].update(betas=[0.9]),
    lambda meta: meta["scalars"].update({"not-a-number.step": 3}),
    lambda meta: meta["param_groups"].append(meta["param_groups"][0]),
])
def test_a_damaged_optimizer_state_is_one_line_at_resume(scratch, damage):
    from iisan.run.files import resume_folder

    path = resume_folder(scratch.run) / "optimizer.json"
    meta = json.loads(path.read_text())
    damage(meta)
    path.write_text(json.dumps(meta))
    result = cli("train", scratch.dataset, "--cache", scratch.cache, "--out", scratch.run, "--resume", "--epochs", "3",
                 "--train-batch-size", "32", "--seed", "1")
    one_line_error(result, "optimizer.json", "does not hold this run's optimizer state")
