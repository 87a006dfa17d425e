"""After any error answer, 500 included, the client's keep-alive connection still works
(issue 28, point 8: after a 500 the server reset it). A real uvicorn server on a free port."""

from __future__ import annotations

import http.client
import json
import threading
import time

import uvicorn

from iisan.serving.recommender import Recommender
from iisan.serving.service import create_app


def test_a_connection_survives_every_kind_of_error_answer(scratch):
    recommender = Recommender.load(scratch.run)
    key = recommender.keys[1]

    def broken_item(_key):  # a bug of ours, on one route only
        raise RuntimeError("boom")

    recommender.item = broken_item
    server = uvicorn.Server(uvicorn.Config(create_app(recommender), host="127.0.0.1", port=0, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        answers = []
        for method, path, body in [("GET", f"/items/{key}", None),  # 500
                                   ("POST", "/recommend", b"{not json"),  # 422
                                   ("GET", "/items/no-such-key", None),  # 404
                                   ("POST", "/items", json.dumps({"items": [{"key": "x", "text": "t",
                                                                            "image": "!!"}]}).encode()),  # 422
                                   ("GET", "/health", None)]:
            connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            answers.append((response.status, json.loads(response.read())))
        assert [status for status, _ in answers] == [500, 422, 404, 422, 200]
        assert answers[0][1] == {"error": "internal error: RuntimeError"}
        connection.close()
    finally:
        server.should_exit = True
        thread.join(10)
