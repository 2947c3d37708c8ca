"""Database reads run in a few threads of their own, at most one per reader
connection, so the event loop keeps answering (/health among others) while
a slow read runs.

A bare job queue and call_soon_threadsafe: anyio's to_thread (capacity
limiter, cancel scopes, thread bookkeeping) was one of the largest items in
a profile of the query process. A read whose caller went away (client
disconnected) still finishes in its thread; its result is dropped.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
JOIN_TIMEOUT_S = 5.0


class ReadThreads:
    def __init__(self, count: int) -> None:
        self._jobs: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"read-{i}", daemon=True) for i in range(count)]
        for thread in self._threads:
            thread.start()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return await future

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + JOIN_TIMEOUT_S  # one wait for all: a read stuck on the network is a daemon
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args = job
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed to the awaiting request, which handles or logs it
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:
                return  # the loop is closed: the process is stopping


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
