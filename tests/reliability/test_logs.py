"""Logs an operator can trust (issue 46, point 5): a request path never forges a second log
line nor sends terminal escapes; what the client sent is logged as it was sent."""

from __future__ import annotations

from fastapi.testclient import TestClient

from iisan.serving.recommender import Recommender
from iisan.serving.service import create_app


def test_a_path_with_a_newline_or_an_escape_stays_one_plain_log_line(scratch, caplog):
    client = TestClient(create_app(Recommender.load(scratch.run), access_log=True), raise_server_exceptions=False)
    with caplog.at_level("INFO", logger="iisan.access"):
        client.get("/items/a%0a127.0.0.1%20GET%20/admin%20200%1b[31m")
    lines = [record.getMessage() for record in caplog.records if record.name == "iisan.access"]
    assert len(lines) == 1
    for line in lines:
        assert "\n" not in line and "\r" not in line and "\x1b" not in line, line
    assert "/items/a%0a127.0.0.1%20GET%20/admin%20200%1b[31m" in lines[0]


def test_a_decoded_path_is_escaped_when_the_raw_one_is_missing():
    from iisan.serving.middleware import request_path

    assert request_path({"path": "/items/b\x1b[2J\nX"}) == "/items/b\\x1b[2J\\x0aX"


def test_serve_on_a_taken_port_is_one_error_line_before_anything_loads(scratch):
    import socket

    from tests.reliability.conftest import cli, one_line_error

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", scratch.run, "--port", port)
    one_line_error(result, f"127.0.0.1:{port}", "choose another --port")
    assert "serving" not in result.stderr


def test_a_token_clients_would_send_differently_is_refused_at_start(tmp_path):
    import pytest

    from iisan.errors import ConfigError
    from iisan.serving.service import read_token

    for token in ("pässwört", "two words", "tab\there"):
        (tmp_path / "t").write_text(token + "\n", encoding="utf-8")
        with pytest.raises(ConfigError, match="outside"):
            read_token(tmp_path / "t")
    (tmp_path / "t").write_text("Ab9-_.~!\n")
    assert read_token(tmp_path / "t") == "Ab9-_.~!"


def test_the_last_request_lines_are_written_when_the_server_is_stopped(scratch):
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "iisan", "serve", str(scratch.run), "--port", str(port)],
                              stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # loading the run: up to a minute
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/items/last-one-in", timeout=5)
        except OSError:
            pass  # 404: what matters is its log line
        server.send_signal(signal.SIGTERM)  # well within the log's one-second flush period
        _, err = server.communicate(timeout=60)
    finally:
        server.kill()
    assert "GET /items/last-one-in 404" in err, (server.returncode, err[-2000:])
