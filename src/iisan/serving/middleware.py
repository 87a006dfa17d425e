"""The service's ASGI middleware: request metrics, the body limit, internal errors as JSON.

Plain ASGI rather than ``@app.middleware("http")``, which wraps every request in extra
tasks and streams and costs more than a whole query does.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from pathlib import Path

from iisan.fileio import storage_failure

log = logging.getLogger(__name__)
access = logging.getLogger("iisan.access")


class Measure:
    """ASGI middleware counting requests by route template and status, and timing them.

    A request's id is the client's ``x-request-id`` (up to 64 characters of letters, digits,
    ``-_.:``), echoed in the answer's headers, else one numbered by this process
    (``<pid>-<n>``, in hexadecimal). With ``access_log``, one line per request on the
    ``iisan.access`` logger: client, method, path, status, milliseconds and request id (never
    a body or another header); the same as fields of the record, for the JSON format
    (:mod:`iisan.serving.access_log`). Nothing is added to an answer the client did not ask
    an id for: the query path is a few milliseconds, and every step of it shows."""

    def __init__(self, app, requests, latency, access_log: bool = False) -> None:
        self.app = app
        self.requests = requests
        self.latency = latency
        self.access_log = access_log
        self.process, self.numbers = os.getpid(), itertools.count(1)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        given = _given_request_id(scope)

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if given is not None:
                    message["headers"] = [*message.get("headers", ()), (b"x-request-id", given.encode())]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")  # the template: few label values
            seconds = time.perf_counter() - start
            self.requests.labels(scope["method"], route, str(status)).inc()
            self.latency.labels(route).observe(seconds)
            if self.access_log:
                fields = {"client": (scope.get("client") or ("-", 0))[0], "method": scope["method"],
                          "path": request_path(scope), "status": status, "ms": round(1000 * seconds, 1),
                          "request_id": given or f"{self.process:x}-{next(self.numbers):x}"}
                access.info("%(client)s %(method)s %(path)s %(status)d %(ms).1f ms %(request_id)s", fields,
                            extra={"fields": fields})


# Control characters (C0, DEL, C1): a decoded %0a would start a forged log line, %1b would
# send escape sequences to the operator's terminal
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def request_path(scope) -> str:
    """The request's path as a log line may hold it: as the client sent it (still
    percent-encoded), any control character written as ``\\xNN``."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else scope.get("path", "")
    return CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", path)


def _given_request_id(scope) -> str | None:
    """The client's ``x-request-id``, when it is one we can log and echo safely."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if 0 < len(given) <= 64 and all(c.isalnum() or c in "-_.:" for c in given):
                return given
            return None
    return None


# Two or more components from the root: a server path (a key in a message is quoted after a
# word or a quote, and one-component names such as /items are routes, not paths)
SERVER_PATH = re.compile(r"(?<![\w.~])(?:/[^\s/'\"`,;:()\[\]]+){2,}")


def without_server_paths(message: str, run_dir: Path | None = None) -> str:
    """``message`` for a client: the run folder named by its name, any other path on the server
    by its last component (the server's file system is nobody else's business)."""
    if run_dir is not None:
        for form in sorted({str(run_dir.resolve()), str(run_dir)}, key=len, reverse=True):
            message = message.replace(form, run_dir.name)
    return SERVER_PATH.sub(lambda m: m.group(0).rsplit("/", 1)[-1], message)


class InternalErrors:
    """ASGI middleware: an unexpected exception (a bug of ours) becomes a 500 with a JSON
    error and no traceback, and the connection stays open. (Starlette's own handler for
    ``Exception`` answers, then re-raises, and the server drops the keep-alive connection.)"""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as err:
            if started:  # half an answer is out: only closing the connection can end it
                raise
            failure = storage_failure(err, getattr(err, "filename", None) or "the run folder")
            if failure is not None:  # the disk's trouble, not a bug: retry later
                status, message, headers = 503, without_server_paths(str(failure)), [(b"retry-after", b"5")]
            else:
                log.exception("internal error answering %s %s", scope.get("method"), request_path(scope))
                status, message, headers = 500, f"internal error: {type(err).__name__}", []
            body = json.dumps({"error": message}).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                    *headers]})
            await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: answer 413 for a body over ``max_bytes``, declared or streamed
    (chunked), before anything parses it.

    The body is read here, up to the limit, and handed on whole: the app would buffer it
    anyway, and an error raised from inside the app's body reading would become its 400.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(send)
            return
        message = await receive()
        if message["type"] == "http.request" and message.get("more_body", False):
            message = await self._gather(message, receive)  # streamed (chunked): one message of it
        if message["type"] == "http.request" and len(message.get("body", b"")) > self.max_bytes:
            await self._reject(send)
            return
        await self.app(scope, _replay([message], receive), send)  # or the client left: the app sees it

    async def _gather(self, message: dict, receive) -> dict:
        """The streamed body from ``message`` on as one message, read only until it is over
        the limit; or the disconnect, if the client leaves first."""
        body = bytearray()
        while message["type"] == "http.request":
            body += message.get("body", b"")
            if len(body) > self.max_bytes or not message.get("more_body", False):
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            message = await receive()
        return message

    async def _reject(self, send) -> None:
        body = json.dumps({"error": f"request body over {self.max_bytes:,} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[dict], receive):
    """An ASGI ``receive`` that yields ``messages`` first, then waits on the real one."""
    pending = list(messages)

    async def replayed() -> dict:
        return pending.pop(0) if pending else await receive()

    return replayed
