"""The query side of the audit log, shared by both backends: filtered,
newest-first pages; one event; an oldest-first export in chunks; the chain
check. A backend brings its schema, its search (`_page_sql`) and its index
size; the events table and its columns are the same on both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
from msgspec import Struct

from persistence_api.audit import StoredEvent, VerifyResult
from core.times import db_text
from plugins import SinkError
from plugins.audit.chain import STORED_COLUMNS, Head, Verifier, ms_start
from plugins.audit.text import is_short_latin
from plugins.direct_db import DirectTables

EXPORT_CHUNK = 2000  # events per read of an export: bounded memory whatever the total
VERIFY_CHUNK = 5000
# The columns an answer needs, in StoredEvent's order, then pos (the cursor).
ANSWER_COLUMNS = ("event_id", "occurred_at", "actor_id", "actor_type", "action", "resource_type", "resource_id",
                  "outcome", "ip", "user_agent", "request_id", "message", "details", "pos")
SELECT_ANSWER = ", ".join(f"e.{c}" for c in ANSWER_COLUMNS)
FILTER_COLUMNS = ("actor_id", "action", "resource_type", "resource_id", "outcome")


class AuditUnavailable(SinkError):
    """The database holding the audit log cannot be reached (503)."""


class EventFilter(Struct, frozen=True):
    """What a list, a search or an export asks for. Times are UTC microseconds, `to_us` exclusive."""
    actor_id: str | None = None
    action: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    outcome: str | None = None
    from_us: int | None = None
    to_us: int | None = None
    words: tuple[str, ...] = ()


class Where(Struct):
    """SQL conditions (with %s marks) and their arguments."""
    clauses: list[str]
    args: list[Any]

    def sql(self) -> str:
        return " AND ".join(self.clauses) if self.clauses else "1=1"


def to_event(row: Sequence[Any]) -> StoredEvent:
    """A selected row (ANSWER_COLUMNS) as the API answers it."""
    occurred = row[1]
    details = row[12]
    return StoredEvent(row[0], f"{occurred[:10]}T{occurred[11:]}Z", row[2], row[3], row[4], row[5], row[6], row[7],
                       row[8], row[9], row[10], row[11],
                       None if details is None else msgspec.Raw(details.encode() if isinstance(details, str) else details))


class AuditLog(DirectTables):
    """Reads of the audit log through the sink's database."""

    def page(self, flt: EventFilter, before_pos: int | None, limit: int) -> tuple[list[StoredEvent], int | None]:
        """Newest first: up to limit events with pos below before_pos, and
        the pos to continue below (None at the end)."""
        where = self._where(flt, before_pos=before_pos)
        sql, args = self._page_sql(flt, where, limit + 1)
        rows = self._db.read(sql, *args)
        more = len(rows) > limit
        rows = rows[:limit]
        return [to_event(r) for r in rows], rows[-1][-1] if more else None

    def get(self, event_id: str) -> StoredEvent | None:
        rows = self._db.read(f"SELECT {SELECT_ANSWER} FROM audit_events e WHERE e.event_id = %s", event_id)
        return to_event(rows[0]) if rows else None

    def export(self, flt: EventFilter) -> Iterator[list[StoredEvent]]:
        """Oldest first, in chunks of EXPORT_CHUNK: each chunk one read, so
        memory stays bounded and no read holds a snapshot for long."""
        after: int | None = None
        while True:
            where = self._where(flt, after_pos=after)
            sql, args = self._export_sql(flt, where, EXPORT_CHUNK)
            rows = self._db.read(sql, *args)
            if rows:
                yield [to_event(r) for r in rows]
            if len(rows) < EXPORT_CHUNK:
                return
            after = rows[-1][-1]

    def verify(self, start: str | None, end: str | None) -> VerifyResult:
        """Walk the whole chain in order (in chunks); count the events that occurred in [start, end)."""
        head = self.head()
        checker = Verifier(head, start, end)
        after = head.first_seq - 1
        columns = ", ".join(STORED_COLUMNS)
        while True:
            rows = self._db.read(f"SELECT {columns} FROM audit_events WHERE seq > %s ORDER BY seq LIMIT %s",
                                 after, VERIFY_CHUNK)
            if not checker.feed(rows) or len(rows) < VERIFY_CHUNK:
                break
            after = rows[-1][1]
        if checker.detail is None:
            checker.finish(head)
        if checker.detail is None:
            return VerifyResult("ok", checker.checked, None)
        return VerifyResult("broken", checker.checked, checker.broken or None, checker.detail)

    def head(self) -> Head:
        rows = self._db.read("SELECT last_seq, last_hash, first_seq, first_prev_hash FROM audit_chain WHERE id = 1")
        return Head(*rows[0]) if rows else Head()

    def count(self) -> int:
        head = self.head()
        return head.last_seq - head.first_seq + 1

    def index_bytes(self) -> int:
        """The size of the search index (for the metric)."""
        raise NotImplementedError

    # -- what a backend decides -------------------------------------------------

    def _page_sql(self, flt: EventFilter, where: Where, limit: int) -> tuple[str, list[Any]]:
        """A newest-first select of ANSWER_COLUMNS (as `e.`) under where, with flt.words searched."""
        raise NotImplementedError

    def _export_sql(self, flt: EventFilter, where: Where, limit: int) -> tuple[str, list[Any]]:
        """As _page_sql, oldest first."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------

    @staticmethod
    def _where(flt: EventFilter, before_pos: int | None = None, after_pos: int | None = None) -> Where:
        where = Where([], [])
        for column in FILTER_COLUMNS:
            value = getattr(flt, column)
            if value is not None:
                where.clauses.append(f"e.{column} = %s")
                where.args.append(value)
        # Times bound pos by whole milliseconds (what the indexes use), and occurred_at exactly.
        low = None if flt.from_us is None else ms_start(flt.from_us)
        high = None if flt.to_us is None else ms_start(flt.to_us + 999)
        if flt.from_us is not None and flt.from_us % 1000:
            where.clauses.append("e.occurred_at >= %s")
            where.args.append(db_text(flt.from_us))
        if flt.to_us is not None and flt.to_us % 1000:
            where.clauses.append("e.occurred_at < %s")
            where.args.append(db_text(flt.to_us))
        if after_pos is not None:
            low = after_pos + 1 if low is None else max(low, after_pos + 1)
        if before_pos is not None:
            high = before_pos if high is None else min(high, before_pos)
        if low is not None:
            where.clauses.append("e.pos >= %s")
            where.args.append(low)
        if high is not None:
            where.clauses.append("e.pos < %s")
            where.args.append(high)
        return where


def short_words(words: Sequence[str]) -> list[str]:
    return [w for w in words if is_short_latin(w)]
