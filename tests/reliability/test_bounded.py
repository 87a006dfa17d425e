"""Bounded under load (issue 46, point 4): one new item cannot hold gigabytes, whichever door
it comes through; additions waiting for the run never starve reads; adding one item writes
that item, not every item added before."""

from __future__ import annotations

import json

import pytest

from tests.reliability.conftest import cli, one_line_error


def test_items_add_refuses_a_text_or_a_key_over_the_bounds_the_service_has(scratch, tmp_path):
    items = tmp_path / "big.jsonl"
    items.write_text(json.dumps({"key": "big", "text": "word " * 4_000}) + "\n")
    one_line_error(cli("items", "add", scratch.run, items), "big.jsonl:1", "20,000 characters, more than 10,000")
    items.write_text(json.dumps({"key": "k" * 300, "text": "fine"}) + "\n")
    one_line_error(cli("items", "add", scratch.run, items), "key is 300 characters")


def test_additions_waiting_for_a_held_run_never_starve_reads(scratch, monkeypatch):
    import asyncio
    import time

    import httpx

    from iisan.run.lock import run_lock
    from iisan.serving.recommender import Recommender
    from iisan.serving.service import create_app

    monkeypatch.setenv("IISAN_LOCK_WAIT", "6")
    recommender = Recommender.load(scratch.run)
    app = create_app(recommender)

    async def scene() -> tuple[list[int], int, int, float]:
        # one event loop, as one server has: its request thread pool is shared by every request
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            assert (await client.get("/health")).status_code == 200  # loaded and warm
            with run_lock(scratch.run, "a long index build"):
                posts = [asyncio.create_task(client.post("/items", json={"items": [{"key": f"w{n}", "text": "x"}]}))
                         for n in range(44)]  # more than the request thread pool's 40
                await asyncio.sleep(0.5)
                start = time.perf_counter()
                health = await client.get("/health")
                item = await client.get(f"/items/{recommender.keys[1]}")
                waited = time.perf_counter() - start  # the additions wait up to 6 s for the lock meanwhile
            codes = [(await post).status_code for post in posts]
            return codes, health.status_code, item.status_code, waited

    codes, health, item, waited = asyncio.run(scene())
    assert health == 200 and item == 200 and waited < 2.5, waited
    assert codes.count(503) >= 30 and set(codes) <= {200, 503}, codes  # told at once to come back


@pytest.mark.parametrize("serve_width", [0, 16])  # one stage; two, whose codes travel with their items
def test_adding_one_item_writes_that_item_not_every_item_added_before(tiny_multimodal, tmp_path, serve_width):
    import math

    from iisan.config import TrainConfig
    from iisan.run.index_store import SEGMENT
    from iisan.serving.recommender import Recommender
    from iisan.training.loop import train

    dataset, cache = tiny_multimodal
    run = tmp_path / "run"
    train(dataset, run, TrainConfig.for_method("iisan", epochs=1, train_batch_size=32, seed=4, eval_user_chunk=64,
                                               serve_width=serve_width, candidates=20), cache_dir=cache)
    recommender = Recommender.load(run)
    index = run / "index"
    written, previous = 0, {}
    for n in range(40):
        recommender.add_items([{"key": f"one-{n}", "text": f"an item added alone, number {n}"}])
        meta = json.loads((index / "index.json").read_text())
        generation = index / meta["generation"]
        segments = {tuple(pair): (generation / f"{SEGMENT.format(start=pair[0], end=pair[1])}.safetensors").stat().st_ino
                    for pair in meta["segments"]}
        for (start, end), inode in segments.items():
            if previous.get((start, end)) == inode:
                continue  # linked from the generation before: not written again
            written += end - start
        previous = segments
        assert len(segments) <= math.log2(n + 1) + 1, meta["segments"]
    assert written <= 40 * (math.log2(40) + 1) / 2 + 40, written  # a binary counter's, far from 40 * 41 / 2
    reloaded = Recommender.load(run)
    assert all(f"one-{n}" in reloaded.ids for n in range(40))
    assert reloaded.recommend(["one-39", "one-3"], k=5) == recommender.recommend(["one-39", "one-3"], k=5)


def test_request_headers_are_bounded_in_size_and_in_time():
    import socket
    import threading
    import time

    import uvicorn

    from iisan.serving.protocol import BoundedHeaders

    class QuickHeaders(BoundedHeaders):
        header_seconds = 1.0

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, http=QuickHeaders, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)

        def exchange(*chunks: bytes, pause: float = 0.0) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                for chunk in chunks:
                    try:
                        client.sendall(chunk)
                    except OSError:  # the server closed on us: what it said is below
                        break
                    time.sleep(pause)
                answer = b""
                while chunk := client.recv(65536):
                    answer += chunk
                return answer

        assert exchange(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").endswith(b"ok")
        huge = [b"GET / HTTP/1.1\r\nx-big: "] + [b"a" * 65536] * 40  # 2.5 MB of one header, never ended
        assert exchange(*huge).startswith(b"HTTP/1.1 431")
        start = time.perf_counter()
        assert exchange(b"GET / HTTP/1.1\r\n", b"host: x\r\n", b"x-slow: 1\r\n", pause=0.6) == b""  # closed, unanswered
        assert time.perf_counter() - start < 5
        start = time.perf_counter()
        assert exchange() == b""  # connected, never sent a byte: closed too
        assert time.perf_counter() - start < 5
    finally:
        server.should_exit = True
        thread.join(timeout=10)
