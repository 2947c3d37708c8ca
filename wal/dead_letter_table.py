"""The spool's dead-letter table: records and commands that could not be
stored, kept until an operator retries or purges them (the policy of what a
retry replays is wal/dead_letters.py's)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from core.times import now_us
from wal.base import SpoolBase
from wal.types import Append, DeadLetter, SpoolFull


class DeadLetterTable(SpoolBase):
    def dead_letters(self, limit: int = 100, after_id: int = 0) -> list[DeadLetter]:
        rows = self._conn.execute(
            "SELECT seq, kind, record_key, received_at_us, error, payload, failed_at_us, id"
            " FROM dead_letters WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
        return [DeadLetter(*row) for row in rows]

    def dead_letter_count(self) -> int:
        return self._conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]

    def purge_dead_letters(self, ids: Iterable[int] | None = None) -> int:
        """Delete the given dead letters (all when ids is None); returns how many."""
        with self._transaction() as conn:
            if ids is None:
                return conn.execute("DELETE FROM dead_letters").rowcount
            return conn.executemany("DELETE FROM dead_letters WHERE id = ?", [(i,) for i in ids]).rowcount

    def requeue_dead_letters(self, ids: Sequence[int] | None, after_id: int, limit: int,
                             replay: Callable[[DeadLetter], Append | str]) -> tuple[list[int], list[int], list[tuple[int, str]]]:
        """One transaction: the dead letters named by ids (or, with ids None,
        up to limit of them after after_id) become spool entries again, made by
        replay, and leave the table; one that replay cannot make stays, with
        replay's reason. Returns (found, requeued, kept) ids. Raises SpoolFull,
        changing nothing, when the entries would pass spool.max_bytes."""
        if ids is None:
            where, params = "id > ? ORDER BY id LIMIT ?", [after_id, limit]
        else:
            where, params = f"id IN ({','.join('?' * len(ids))}) ORDER BY id", list(ids)
        with self._transaction() as conn:
            found = [DeadLetter(*row) for row in conn.execute(
                "SELECT seq, kind, record_key, received_at_us, error, payload, failed_at_us, id"
                f" FROM dead_letters WHERE {where}", params).fetchall()]
            made = [(dead.id, replay(dead)) for dead in found]
            entries = [(i, e) for i, e in made if isinstance(e, Append)]
            kept = [(i, e) for i, e in made if isinstance(e, str)]
            clock, live_bytes = conn.execute("SELECT clock_us, live_bytes FROM state").fetchone()
            size = sum(len(e.payload) for _, e in entries)
            if live_bytes + size > self._settings.max_bytes:
                raise SpoolFull(f"spool holds {live_bytes} bytes, limit {self._settings.max_bytes}: "
                                f"the retry ({size} bytes) must wait")
            received = max(now_us(), clock + 1)
            self._insert_entries(conn, [(received + n, e) for n, (_, e) in enumerate(entries)])
            conn.executemany("DELETE FROM dead_letters WHERE id = ?", [(i,) for i, _ in entries])
        return [d.id for d in found], [i for i, _ in entries], kept
