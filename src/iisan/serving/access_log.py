"""The service's request log: one plain line per request on stderr (written by
:class:`iisan.serving.middleware.Measure` to the ``iisan.access`` logger)."""

from __future__ import annotations

import atexit
import io
import json
import logging
import sys
import threading
from collections.abc import Callable


class JsonLines(logging.Formatter):
    """One JSON object per request: ``time`` and the fields the middleware recorded."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), **getattr(record, "fields", {})})


def log_requests_to_stderr(json_lines: bool = False, flush_seconds: float = 1.0) -> Callable[[], None]:
    """Send ``iisan.access`` to stderr, plain or as JSON lines, in blocks flushed at least
    every ``flush_seconds`` (a write per line, or a rich-rendered line, cost 5-10% of the
    throughput under load, side by side in bench/serve.py). Returns what flushes it now: the
    server calls it when it stops (uvicorn ends on SIGTERM by raising the signal again, so no
    exit handler would run)."""
    try:
        descriptor = sys.stderr.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):  # stderr is not a file (captured): as it is
        descriptor = None
    stream = sys.stderr if descriptor is None else io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(descriptor, "w", closefd=False), 1 << 16), encoding="utf-8", errors="replace")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLines() if json_lines else
                         logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S"))
    handler.flush = lambda: None  # StreamHandler flushes after every record; the timer does it instead
    requests_log = logging.getLogger("iisan.access")
    requests_log.handlers, requests_log.propagate = [handler], False
    requests_log.setLevel(logging.INFO)

    def flush_now_and_then() -> None:
        while True:
            threading.Event().wait(flush_seconds)
            try:
                with handler.lock:
                    stream.flush()
            except ValueError:  # stderr closed: the process is ending
                return

    def flush() -> None:
        try:
            with handler.lock:
                stream.flush()
        except ValueError:  # stderr closed: the process is ending
            pass

    threading.Thread(target=flush_now_and_then, name="iisan-access-log", daemon=True).start()
    atexit.register(flush)
    return flush
