"""Concurrent queries answered in batches, and additions one at a time, off the event loop."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from iisan.errors import RunBusyError

from iisan.config import Query


class QueryBatcher:
    """Answers concurrent ``/recommend`` requests in batches, off the event loop.

    One worker thread takes every query waiting when it becomes free (up to ``max_batch``)
    and answers them with one :meth:`~iisan.serving.recommender.Recommender.recommend_many` call: a
    user-encoder pass and an index search cost nearly the same for 16 queries as for one,
    so under load throughput grows with the batch instead of requests queueing one by one.
    No query waits for a batch to fill: an idle worker takes the first one at once.
    """

    def __init__(self, recommender, max_batch: int = 64) -> None:
        self.recommender = recommender
        self.max_batch = max_batch
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self._started = False
        self._start_lock = threading.Lock()

    async def answer(self, query: Query) -> list[tuple[str, float]]:
        if not self._started:
            with self._start_lock:
                if not self._started:
                    threading.Thread(target=self._work, name="iisan-recommend", daemon=True).start()
                    self._started = True
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.queue.put((query, future, loop))
        return await future

    def _work(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self.recommender.recommend_many([query for query, _, _ in batch])
            except Exception as err:  # noqa: BLE001 - handed to every waiting request
                results = [err] * len(batch)
            by_loop: dict = {}
            for (_, future, loop), result in zip(batch, results):
                by_loop.setdefault(loop, []).append((future, result))
            for loop, settled in by_loop.items():  # one wake-up per loop, not one per query
                loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list) -> None:
    for future, result in settled:
        if future.cancelled():  # the client went away
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


class WriteQueue:
    """Additions run one at a time on a thread of their own, at most ``pending`` waiting.

    A writer may wait for the run's lock (another process adding, an index build) for up to
    a minute; on the request thread pool, a few dozen such waits would take every thread and
    leave none for reads (``/health``, ``GET /items``). Here they wait apart, and beyond
    ``pending`` a request is told at once to come back (503, as a busy run is)."""

    def __init__(self, pending: int = 8) -> None:
        self.slots = threading.BoundedSemaphore(pending)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="iisan-write")

    async def run(self, write: Callable[..., Any], *args: Any) -> Any:
        if not self.slots.acquire(blocking=False):
            raise RunBusyError("too many additions are waiting for the run; try again shortly")
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, write, *args)
        finally:
            self.slots.release()
