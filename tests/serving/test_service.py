"""The HTTP service, driven in-process: valid requests, and a corpus of bad ones that must
all get a 4xx with a JSON error, never a 500."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from iisan.errors import ConfigError
from iisan.serving.recommender import Recommender
from iisan.serving.schema import MAX_HISTORY, MAX_ITEMS_PER_REQUEST, MAX_K
from iisan.serving.service import create_app, is_loopback, read_token
from tests.conftest import png_bytes

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def recommender(tiny_run, tmp_path_factory) -> Recommender:
    run = tmp_path_factory.mktemp("serve") / "run"
    shutil.copytree(tiny_run, run)
    return Recommender.load(run)


@pytest.fixture(scope="module")
def client(recommender) -> TestClient:
    return TestClient(create_app(recommender, token=TOKEN, max_body_bytes=64 * 1024), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def history(recommender) -> list[str]:
    return recommender.keys[1:4]


def test_recommend_matches_the_library(client, recommender, history):
    response = client.post("/recommend", json={"history": history, "k": 5})
    assert response.status_code == 200
    items = response.json()["items"]
    assert [(i["key"], pytest.approx(i["score"], rel=1e-5)) for i in items] == recommender.recommend(history, k=5)
    assert all(i["title"] == recommender.item(i["key"])["title"] for i in items)
    with_seen = client.post("/recommend", json={"history": history, "k": 3, "exclude_seen": False}).json()["items"]
    assert [i["key"] for i in with_seen] == [k for k, _ in recommender.recommend(history, k=3, exclude_seen=False)]


def test_unknown_keys_are_named_or_skipped(client, history):
    response = client.post("/recommend", json={"history": [*history, "nope"]})
    assert response.status_code == 422 and response.json()["unknown"] == ["nope"]
    assert "nope" in response.json()["error"]
    assert client.post("/recommend", json={"history": [*history, "nope"], "skip_unknown": True}).status_code == 200


def test_items_health_metrics_and_docs(client, recommender, history):
    item = client.get(f"/items/{history[0]}").json()
    assert item == {"key": history[0], "title": recommender.item(history[0])["title"], "added": False}
    assert client.get("/items/nope").status_code == 404
    assert client.get("/health").json() == {"status": "ok", "items": recommender.num_items, "index": "flat", "problems": []}
    assert client.post("/recommend", json={"history": history, "k": 2}).status_code == 200  # whatever ran before
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'iisan_requests_total{method="POST",route="/recommend",status="200"}' in metrics.text
    assert "iisan_request_seconds_bucket" in metrics.text
    assert client.get("/docs").status_code == 200
    assert "/recommend" in client.get("/openapi.json").json()["paths"]


def test_adding_items_needs_the_token_and_serves_them_at_once(client, recommender, history):
    body = {"items": [{"key": "http-new", "text": "red lamp", "image": base64.b64encode(png_bytes()).decode()}]}
    assert client.post("/items", json=body).status_code == 401
    assert client.post("/items", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = client.post("/items", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.json() == {"added": ["http-new"], "items": recommender.num_items}
    assert client.get("/items/http-new").json()["added"] is True
    answer = client.post("/recommend", json={"history": [*history, "http-new"], "k": 3})
    assert answer.status_code == 200 and len(answer.json()["items"]) == 3
    again = client.post("/items", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert again.status_code == 422 and "already in the catalogue" in again.json()["error"]


def test_without_a_token_writes_are_open(recommender):
    open_client = TestClient(create_app(recommender), raise_server_exceptions=False)
    response = open_client.post("/items", json={"items": [{"key": "open-new", "text": "blue mug"}]})
    assert response.status_code == 200


AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEY = "__KNOWN__"  # replaced by a known key

BAD_REQUESTS = [
    # (method, path, body or raw bytes, headers, expected status)
    ("POST", "/recommend", b"{not json", {}, 422),
    ("POST", "/recommend", b"", {}, 422),
    ("POST", "/recommend", b"null", {}, 422),
    ("POST", "/recommend", b"[]", {}, 422),
    ("POST", "/recommend", b'"history"', {}, 422),
    ("POST", "/recommend", {}, {}, 422),
    ("POST", "/recommend", {"history": []}, {}, 422),
    ("POST", "/recommend", {"history": "abc"}, {}, 422),
    ("POST", "/recommend", {"history": [1, 2]}, {}, 422),
    ("POST", "/recommend", {"history": [None]}, {}, 422),
    ("POST", "/recommend", {"history": [""]}, {}, 422),
    ("POST", "/recommend", {"history": ["x" * 300]}, {}, 422),
    ("POST", "/recommend", {"history": [KEY] * (MAX_HISTORY + 1)}, {}, 422),
    ("POST", "/recommend", {"history": [KEY], "k": 0}, {}, 422),
    ("POST", "/recommend", {"history": [KEY], "k": -3}, {}, 422),
    ("POST", "/recommend", {"history": [KEY], "k": MAX_K + 1}, {}, 422),
    ("POST", "/recommend", {"history": [KEY], "k": "ten"}, {}, 422),
    ("POST", "/recommend", {"history": [KEY], "k": 2.5}, {}, 422),
    ("POST", "/recommend", {"history": [KEY], "exclude_seen": "maybe"}, {}, 422),
    ("POST", "/recommend", {"history": [KEY], "k": "5"}, {}, 422),  # strict: a string is not a number
    ("POST", "/recommend", {"history": [KEY], "k": True}, {}, 422),
    ("POST", "/recommend", {"history": [KEY], "exclude_seen": 1}, {}, 422),
    ("POST", "/recommend", {"history": [KEY], "skip_unknown": "true"}, {}, 422),
    ("POST", "/recommend", {"history": [KEY], "colour": "red"}, {}, 422),
    ("POST", "/recommend", {"history": ["nope"]}, {}, 422),
    ("POST", "/recommend", {"history": ["nope"], "skip_unknown": True}, {}, 422),
    ("POST", "/recommend", {"history": [KEY], "pad": "x" * 70_000}, {}, 413),
    ("POST", "/recommend", b"{}", {"content-length": "99999999"}, 413),
    ("GET", "/recommend", None, {}, 405),
    ("PUT", "/recommend", {"history": [KEY]}, {}, 405),
    ("GET", "/nowhere", None, {}, 404),
    ("GET", "/items/nope", None, {}, 404),
    ("POST", "/items", {"items": [{"key": "a", "text": "x"}]}, {}, 401),
    ("POST", "/items", {"items": [{"key": "a", "text": "x"}]}, {"Authorization": "Basic abc"}, 401),
    ("POST", "/items", {"items": [{"key": "a", "text": "x"}]}, {"Authorization": "Bearer"}, 401),
    ("POST", "/items", b"{broken", AUTH, 422),
    ("POST", "/items", {"items": []}, AUTH, 422),
    ("POST", "/items", {"items": "a"}, AUTH, 422),
    ("POST", "/items", {"items": [{"text": "no key"}]}, AUTH, 422),
    ("POST", "/items", {"items": [{"key": "a"}]}, AUTH, 422),
    ("POST", "/items", {"items": [{"key": "a", "text": 7}]}, AUTH, 422),
    ("POST", "/items", {"items": [{"key": "a", "text": "x", "image": "%%% not base64"}]}, AUTH, 422),
    ("POST", "/items", {"items": [{"key": "a", "text": "x", "image": base64.b64encode(b"not an image").decode()}]}, AUTH, 422),
    ("POST", "/items", {"items": [{"key": "a", "text": "x", "extra": 1}]}, AUTH, 422),
    ("POST", "/items", {"items": [{"key": KEY, "text": "x"}]}, AUTH, 422),
    ("POST", "/items", {"items": [{"key": "d", "text": "x"}, {"key": "d", "text": "y"}]}, AUTH, 422),
    ("POST", "/items", {"items": [{"key": f"m{i}", "text": "x"} for i in range(MAX_ITEMS_PER_REQUEST + 1)]}, AUTH, 422),
    ("POST", "/items", {"items": [{"key": "a", "text": "x" * 10_001}]}, AUTH, 422),
]


@pytest.mark.parametrize("method, path, body, headers, status", BAD_REQUESTS,
                         ids=[f"{i:02d}-{m}-{p}" for i, (m, p, *_rest) in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_a_4xx_with_a_json_error(client, history, method, path, body, headers, status):
    if isinstance(body, (dict, list)):
        body = json.dumps(body).replace(KEY, history[0]).encode()
    response = client.request(method, path, content=body,
                              headers={"content-type": "application/json", **headers})
    assert response.status_code == status, response.text
    assert "error" in response.json() and "Traceback" not in response.text


def test_the_bad_input_corpus_is_big_enough():
    assert len(BAD_REQUESTS) >= 30


def test_token_file_and_loopback_helpers(tmp_path):
    (tmp_path / "t").write_text("  abc \n")
    assert read_token(tmp_path / "t") == "abc"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_token(tmp_path / "empty")
    with pytest.raises(ConfigError, match="cannot read"):
        read_token(tmp_path / "missing")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")


def test_concurrent_queries_are_batched_and_answered_each_their_own(recommender):
    import asyncio
    import time

    from iisan.errors import UnknownItemError
    from iisan.serving.batcher import QueryBatcher
    from iisan.config import Query

    sizes = []

    class Slow:  # records batch sizes; the first batch is slow so that others queue up
        def recommend_many(self, queries):
            sizes.append(len(queries))
            if len(sizes) == 1:
                time.sleep(0.2)
            return recommender.recommend_many(queries)

    batcher = QueryBatcher(Slow())
    keys = recommender.keys
    queries = [Query(keys[i:i + 3], k=4) for i in range(1, 21)] + [Query(["nope"])]

    async def ask_all():
        return await asyncio.gather(*(batcher.answer(q) for q in queries), return_exceptions=True)

    answers = asyncio.run(ask_all())
    assert max(sizes) > 1 and sum(sizes) == len(queries)
    for query, answer in zip(queries[:-1], answers[:-1]):
        assert [k for k, _ in answer] == [k for k, _ in recommender.recommend(query.history, k=4)]
    assert isinstance(answers[-1], UnknownItemError)


def test_a_chunked_body_over_the_limit_gets_413(client, history):
    def chunks():  # no Content-Length: the body streams in pieces
        yield b'{"history": ["' + history[0].encode() + b'"], "pad": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'

    response = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over" in response.json()["error"]
    small = client.post("/recommend", content=iter([b'{"history": ["', history[0].encode(), b'"]}']),
                        headers={"content-type": "application/json"})
    assert small.status_code == 200  # a small chunked body is read whole and answered


def test_the_body_limit_holds_for_a_body_in_one_message_without_a_declared_length():
    """The usual body arrives in one message; one over the limit with no Content-Length
    (which a client may leave out) is refused before the app reads it."""
    import asyncio

    from iisan.serving.middleware import BodyLimit

    async def app(scope, receive, send):  # answers with the length of the body it was handed
        body = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})

    def call(body: bytes) -> list[dict]:
        sent = []

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            sent.append(message)

        asyncio.run(BodyLimit(app, max_bytes=100)({"type": "http", "headers": []}, receive, send))
        return sent

    assert call(b"x" * 100)[0]["status"] == 200 and call(b"x" * 100)[1]["body"] == b"100"
    refused = call(b"x" * 101)
    assert refused[0]["status"] == 413 and b"over 100 bytes" in refused[1]["body"]


def test_a_9_mib_chunked_body_gets_413_at_the_default_limit(recommender):
    client = TestClient(create_app(recommender), raise_server_exceptions=False)
    body = (b"x" * (1 << 20) for _ in range(9))
    assert client.post("/recommend", content=body, headers={"content-type": "application/json"}).status_code == 413


def test_keys_with_a_slash_can_be_added_and_looked_up(client):
    response = client.post("/items", json={"items": [{"key": "shelf/7", "text": "a shelf"}]}, headers=AUTH)
    assert response.status_code == 200, response.text
    item = client.get("/items/shelf/7")
    assert item.status_code == 200 and item.json()["key"] == "shelf/7" and item.json()["added"]


def test_openapi_describes_the_error_bodies_sent(client):
    spec = client.get("/openapi.json").json()
    recommend = spec["paths"]["/recommend"]["post"]["responses"]
    error_schema = {"$ref": "#/components/schemas/ErrorBody"}
    assert recommend["422"]["content"]["application/json"]["schema"] == error_schema
    assert recommend["413"]["content"]["application/json"]["schema"] == error_schema
    items = spec["paths"]["/items"]["post"]["responses"]
    assert {"401", "413", "422", "503"} <= set(items)
    assert "404" in spec["paths"]["/items/{key}"]["get"]["responses"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's default, which we never send
    assert spec["components"]["schemas"]["RecommendRequest"]["properties"]["k"]["type"] == "integer"


def test_a_failed_save_leaves_the_old_catalogue_serving(tiny_run, tmp_path, monkeypatch):
    import polars as pl

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    recommender = Recommender.load(run)
    client = TestClient(create_app(recommender), raise_server_exceptions=False)
    before = recommender.num_items
    query = {"history": recommender.keys[1:3], "k": 5}
    answer = client.post("/recommend", json=query).json()

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", disk_full)
    response = client.post("/items", json={"items": [{"key": "late", "text": "a late item"}]})
    assert response.status_code == 503 and "no space left on device" in response.json()["error"]
    assert "nothing was changed" in response.json()["error"] and response.headers["retry-after"] == "5"
    assert recommender.num_items == before and client.get("/items/late").status_code == 404
    assert client.post("/recommend", json=query).json() == answer  # answered from the old state
    assert client.get("/health").status_code == 200
    monkeypatch.undo()
    assert client.post("/items", json={"items": [{"key": "late", "text": "a late item"}]}).status_code == 200
    assert Recommender.load(run).num_items == before + 1  # the retry was stored


def test_health_answers_503_when_queries_would_fail(recommender, monkeypatch):
    client = TestClient(create_app(recommender), raise_server_exceptions=False)
    monkeypatch.setattr(recommender.index, "search", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("broken")))
    response = client.get("/health")
    assert response.status_code == 503 and response.json()["status"] == "failing"


def test_the_access_log_has_one_line_per_request(recommender, caplog):
    """issue 30: `iisan serve` was silent after start-up."""
    client = TestClient(create_app(recommender, access_log=True), raise_server_exceptions=False)
    with caplog.at_level("INFO", logger="iisan.access"):
        client.post("/recommend", json={"history": recommender.keys[1:3], "k": 3})
        client.get("/items/no-such-key")
    lines = [record.getMessage() for record in caplog.records if record.name == "iisan.access"]
    assert len(lines) == 2
    assert re.fullmatch(r"testclient POST /recommend 200 [\d.]+ ms [0-9a-f]+-1", lines[0])  # pid-number
    assert " GET /items/no-such-key 404 " in lines[1]
    fields = [record.fields for record in caplog.records if record.name == "iisan.access"]
    assert fields[1]["status"] == 404 and fields[1]["path"] == "/items/no-such-key"  # what --log-format json writes
    tagged = client.get("/health", headers={"x-request-id": "req-42"})
    assert tagged.headers["x-request-id"] == "req-42"  # the client's id comes back, and is logged
    assert "x-request-id" not in client.get("/health", headers={"x-request-id": "bad id!"}).headers
    assert "x-request-id" not in client.get("/health").headers
    quiet = TestClient(create_app(recommender), raise_server_exceptions=False)
    caplog.clear()
    with caplog.at_level("INFO", logger="iisan.access"):
        quiet.get("/health")
    assert not [r for r in caplog.records if r.name == "iisan.access"]


def test_recommend_for_a_user_of_the_dataset(client, recommender):
    import polars as pl

    from iisan.run.files import read_run_config

    sequences = pl.read_parquet(Path(read_run_config(recommender.run_dir)["dataset"]) / "sequences.parquet")
    user = sequences["user_key"][0]
    by_user = client.post("/recommend", json={"user": user, "k": 3})
    by_history = client.post("/recommend", json={"history": recommender.history_of(user), "k": 3})
    assert by_user.status_code == 200 and by_user.json() == by_history.json()
    unknown = client.post("/recommend", json={"user": "nobody"})
    assert unknown.status_code == 404 and "unknown user 'nobody'" in unknown.json()["error"]
    by_get = client.get(f"/users/{user}/recommendations", params={"k": 3})
    assert by_get.status_code == 200 and by_get.json() == by_user.json()
    assert client.get("/users/nobody/recommendations").status_code == 404
    both = client.post("/recommend", json={"user": user, "history": ["x"]})
    assert both.status_code == 422 and "one of them" in both.json()["error"]
    assert client.post("/recommend", json={"k": 3}).status_code == 422


def test_a_body_that_is_not_json_is_named_so(client):
    response = client.post("/recommend", content=b'{"history": ["1"]', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"] == "the body is not valid JSON (character 17: Expecting ',' delimiter)"


def _counter(text: str, catalogue: str) -> float:
    match = re.search(rf'^iisan_recommended_items_total{{catalogue="{catalogue}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_the_places_of_items_added_after_training(recommender, history, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(recommender.run_dir, run)  # a catalogue of its own: items are added below
    own = Recommender.load(run)
    client = TestClient(create_app(own), raise_server_exceptions=False)
    assert client.post("/items", json={"items": [{"key": "metric-new", "text": "green mug"}]}).status_code == 200
    answer = client.post("/recommend", json={"history": history, "k": own.num_items}).json()["items"]  # every item
    assert "metric-new" in {item["key"] for item in answer}
    # the module's catalogue may hold items other tests added: each counts as added too
    added = sum(client.get(f"/items/{item['key']}").json()["added"] for item in answer)
    assert added == sum(item["added"] for item in answer)  # each answer says it too
    text = client.get("/metrics").text
    assert _counter(text, "added") == added and _counter(text, "trained") == len(answer) - added
