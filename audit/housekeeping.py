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
# The index's size reads every block of the SQLite search tables (0.3-0.7 s per
# query worker at 1M events, docs/BENCHMARKS.md) and changes slowly: every 20th round.
INDEX_EVERY_ROUNDS = 20


async def housekeeping(log: AuditLog, threads: ReadThreads) -> None:
    rounds = 0
    while True:
        try:
            metrics.AUDIT_EVENTS_STORED.set(await threads.run(log.count))
            if rounds % INDEX_EVERY_ROUNDS == 0:
                metrics.AUDIT_INDEX_BYTES.set(await threads.run(log.index_bytes))
            rounds += 1
        except SinkError as exc:  # the database is away (or the tables not made yet): measured next time
            logger.debug("audit log not measured: %s", exc)
        await asyncio.sleep(MEASURE_EVERY_S)
