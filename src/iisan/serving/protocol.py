"""The HTTP/1.1 connection the service runs on: uvicorn's (httptools), with the request
headers bounded in size and in time.

uvicorn bounds neither: a client may send one 300 MB header (the parser keeps it all) or
send its headers a byte a minute (each such client holds a descriptor for as long as it
likes). Here a request's headers must arrive whole within :data:`MAX_HEADER_BYTES` (431
otherwise) and within :data:`HEADER_SECONDS` of the connection opening or of the request's
first byte (the connection is closed otherwise). Bodies keep their own bound (the
service's body limit, 413), and an idle keep-alive connection uvicorn's own timeout.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 64 * 1024  # the request line and every header: far above any real client's
HEADER_SECONDS = 10.0


class BoundedHeaders(HttpToolsProtocol):
    """uvicorn's httptools protocol, its request headers bounded (see the module)."""

    max_header_bytes = MAX_HEADER_BYTES
    header_seconds = HEADER_SECONDS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._headers_done = False
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()  # a connection that never sends a whole request is closed too

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._headers_done or self.transport.is_closing():
            return
        self._header_bytes += len(data)  # this chunk left the headers unfinished
        if self._header_bytes > self.max_header_bytes:
            self._disarm()
            body = b"the request headers are over the limit"
            self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; "
                                 b"charset=utf-8\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._headers_done, self._header_bytes = False, 0
        self._arm()

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if not self._headers_done and not self.transport.is_closing():
            self.transport.close()
