"""Group commit: one thread per ingest worker owns the spool connection and
commits every request that queued up while the previous commit was syncing.

Appending inside the event loop costs one fsync per request and stalls every
other request meanwhile; here the loop only hands the payload over and awaits
a future, and one fsync covers as many requests as arrived during the last.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading

from msgspec import Struct

from core.settings import SpoolSettings
from wal import Spool, SpoolError
from wal.types import Append

logger = logging.getLogger(__name__)


class ShuttingDown(SpoolError):
    """The worker is stopping and accepts nothing more."""

    error_code = "SHUTTING_DOWN"


class _Request(Struct):
    append: Append
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class SpoolWriter:
    def __init__(self, settings: SpoolSettings) -> None:
        self._settings = settings
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
        self._opened = threading.Event()
        self._open_error: BaseException | None = None
        self._stopping = False

    def start(self) -> None:
        self._thread.start()
        self._opened.wait()
        if self._open_error is not None:
            raise self._open_error

    def stop(self) -> None:
        """Commit everything already queued, then stop the thread."""
        self._stopping = True
        self._queue.put(None)
        self._thread.join()

    async def append(self, item: Append) -> int:
        """Returns the entry's seq once it is committed to the spool."""
        if self._stopping:
            raise ShuttingDown("the service is shutting down")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Request(item, future, loop))
        return await future

    def _run(self) -> None:
        try:
            spool = Spool.open(self._settings)
        except BaseException as exc:  # handed to start(), which re-raises it
            self._open_error = exc
            self._opened.set()
            return
        self._opened.set()
        # As SQLite applies them to this connection: what an acknowledgement promises.
        logger.info("spool writer open: journal_mode=%s synchronous=%s", *spool.durability())
        try:
            while self._commit_next(spool):
                pass
        finally:
            spool.close()
            self._refuse_leftovers()

    def _refuse_leftovers(self) -> None:
        # Requests that raced with stop(): answer them rather than leave them hanging.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item.loop.call_soon_threadsafe(_settle, item.future, ShuttingDown("the service is shutting down"))

    def _commit_next(self, spool: Spool) -> bool:
        first = self._queue.get()
        if first is None:
            return False
        batch = [first]
        more = True
        while len(batch) < self._settings.group_commit_max_entries:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                more = False
                break
            batch.append(item)
        try:
            results = spool.append_many([r.append for r in batch])
        except Exception:  # a bug: answer these requests (not accepted) and keep the writer alive
            logger.exception("spool append failed unexpectedly for %d requests", len(batch))
            results = [SpoolError("internal error in the spool writer") for _ in batch]
        for request, result in zip(batch, results):
            request.loop.call_soon_threadsafe(_settle, request.future, result)
        return more


def _settle(future: asyncio.Future, result: int | SpoolError) -> None:
    if future.done():  # the client went away; the entry is committed all the same
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
