"""The query process's background work for the audit log: publish the
number of stored events and the search index's size for the gauges."""

from __future__ import annotations

import asyncio
import logging

from core import metrics
from plugins import SinkError
from plugins.audit.store import AuditLog
from query.read_threads import ReadThreads

logger = logging.getLogger(__name__)
MEASURE_EVERY_S = 30.0


async def housekeeping(log: AuditLog, threads: ReadThreads) -> None:
    while True:
        try:
            metrics.AUDIT_EVENTS_STORED.set(await threads.run(log.count))
            metrics.AUDIT_INDEX_BYTES.set(await threads.run(log.index_bytes))
        except SinkError as exc:  # the database is away (or the tables not made yet): measured next time
            logger.debug("audit log not measured: %s", exc)
        await asyncio.sleep(MEASURE_EVERY_S)
