"""Several sink connections writing one drain cycle at once (`flush.writers`).

Each writer owns a hash range of keys (crc32 of the key, modulo the number
of writers) and writes its share of the cycle in its own transaction, so
one writer's statements are being built in Python while the database runs
another's: the flusher and MariaDB stop taking turns. The order per key is
kept because a key always has one writer per cycle and a cycle ends (every
writer committed, or the cycle failed and is replayed whole) before the next
begins. Append-only tables (the audit chain) stay with the first writer, in
spool order.

A cycle whose writers did not all commit is replayed whole, which the
versioned upserts make harmless. A deadlock or Galera certification conflict
between two writers (their rows share secondary index pages) is retried at
once, a few times, and counted, rather than failing the cycle.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from core import metrics
from plugins import Conflict, Sink
from plugins.tables import TableRows

logger = logging.getLogger(__name__)

CONFLICT_RETRIES = 3  # at once, before the cycle fails and is retried with back-off


class Writers:
    def __init__(self, sinks: Sequence[Sink], share_rows: int = 1000) -> None:
        """share_rows: the rows a writer's transaction is meant to carry (flush.batch_rows): a smaller batch is
        not spread thinner, since each transaction costs the same three statements whatever its size."""
        assert sinks
        self._sinks = list(sinks)
        self._share_rows = share_rows
        self._pool = ThreadPoolExecutor(len(sinks) - 1, "sink-writer") if len(sinks) > 1 else None

    @property
    def count(self) -> int:
        return len(self._sinks)

    def write(self, batch: Sequence[TableRows]) -> set[str]:
        """Sink.write over the writers: the sessions with a delete that left rows out, from all of them. Raises
        the first writer's error (by writer order) once every writer has finished."""
        rows = sum(len(part.rows) for part in batch)
        count = min(len(self._sinks), -(-rows // self._share_rows))
        if self._pool is None or count <= 1:
            return _write_retrying(self._sinks[0], batch)
        shares = split(batch, count)
        futures: list[Future[set[str]]] = [self._pool.submit(_write_retrying, sink, share)
                                           for sink, share in zip(self._sinks[1:], shares[1:]) if share]
        deleted: set[str] = set()
        errors: list[BaseException] = []
        try:
            deleted.update(_write_retrying(self._sinks[0], shares[0]) if shares[0] else set())
        except Exception as exc:  # the others must finish first: raised below
            errors.append(exc)
        for future in futures:
            error = future.exception()
            if error is not None:
                errors.append(error)
            else:
                deleted.update(future.result())
        if errors:
            raise errors[0]
        return deleted

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for sink in self._sinks[1:]:  # the first is the flusher's own sink: its owner closes it
            sink.close()


def split(batch: Sequence[TableRows], writers: int) -> list[list[TableRows]]:
    """Each writer's share of the batch: upserted rows by key hash (each share still sorted by key), append-only
    rows all to the first writer. A share with no rows is empty."""
    shares: list[list[TableRows]] = [[] for _ in range(writers)]
    for part in batch:
        if part.table.kind.write == "append":
            shares[0].append(part)
            continue
        rows: list[list] = [[] for _ in range(writers)]
        accepted: list[list[int]] = [[] for _ in range(writers)]
        for i, row in enumerate(part.rows):
            w = zlib.crc32(row[0].encode()) % writers
            rows[w].append(row)
            if part.accepted_us:
                accepted[w].append(part.accepted_us[i])
        for w in range(writers):
            if rows[w]:
                shares[w].append(TableRows(part.table, rows[w], accepted[w]))
    return shares


def _write_retrying(sink: Sink, batch: Sequence[TableRows]) -> set[str]:
    for attempt in range(CONFLICT_RETRIES + 1):
        try:
            return sink.write(batch)
        except Conflict as exc:
            if attempt == CONFLICT_RETRIES:
                raise
            metrics.FLUSH_CONFLICTS.inc()
            logger.info("write conflict, retrying at once (%d of %d): %s", attempt + 1, CONFLICT_RETRIES, exc)
    raise AssertionError("unreachable")
