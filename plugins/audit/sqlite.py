"""The audit log on SQLite, the embedded default: the events table, the
chain's head, and search on FTS5.

Search uses two contentless FTS5 tables whose row id is the event's `pos`:
- `audit_text_trigram` (the trigram tokenizer): any word of three characters
  or more, Latin or CJK, matches as a substring, ignoring case;
- `audit_text_words` (unicode61 over the text with every CJK run written as
  its character pairs, text.cjk_bigrams): a two-character CJK word is one of
  its tokens, and a Latin word of one or two letters matches whole words.
A word neither serves (one CJK character, punctuation) is checked by
text.matches on the rows the rest of the query selects. Every word goes in
as one quoted FTS5 string, so nothing a client sends is query syntax.

FTS5 iterates matches in descending row id, so a newest-first search stops
after `limit` matches however common the word is.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from core.settings import SinkSettings
from plugins.audit.chain import GENESIS, STORED_COLUMNS, Head, link
from plugins.audit.store import SELECT_ANSWER, AuditLog, AuditUnavailable, EventFilter, Where
from plugins.audit.text import cjk_bigrams, is_cjk, matches, search_text
from plugins.direct_db import DirectDatabase

if TYPE_CHECKING:
    from plugins import ArchiveChunk

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS audit_events (
    pos INTEGER PRIMARY KEY,  -- newest-first order and the search tables' row id (plugins/audit/chain.py)
    seq INTEGER NOT NULL UNIQUE,  -- chain position
    event_id TEXT NOT NULL UNIQUE,
    occurred_at TEXT NOT NULL,
    actor_id TEXT NOT NULL, actor_type TEXT, action TEXT NOT NULL, resource_type TEXT NOT NULL, resource_id TEXT,
    outcome TEXT NOT NULL, ip TEXT, user_agent TEXT, request_id TEXT, message TEXT, details TEXT,
    stored_at TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_audit_actor ON audit_events (actor_id);
CREATE INDEX IF NOT EXISTS idx_audit_action ON audit_events (action);
CREATE INDEX IF NOT EXISTS idx_audit_resource_type ON audit_events (resource_type);
CREATE INDEX IF NOT EXISTS idx_audit_resource_id ON audit_events (resource_id);
CREATE INDEX IF NOT EXISTS idx_audit_outcome ON audit_events (outcome);
CREATE TABLE IF NOT EXISTS audit_chain (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL, last_hash TEXT NOT NULL,
    first_seq INTEGER NOT NULL, first_prev_hash TEXT NOT NULL
);
INSERT OR IGNORE INTO audit_chain VALUES (1, 0, '{GENESIS}', 1, '{GENESIS}');
CREATE VIRTUAL TABLE IF NOT EXISTS audit_text_trigram USING fts5(body, content='', tokenize='trigram');
CREATE VIRTUAL TABLE IF NOT EXISTS audit_text_words USING fts5(
    body, content='', tokenize='unicode61 remove_diacritics 0');
"""
INSERT = f"INSERT INTO audit_events ({', '.join(STORED_COLUMNS)}) VALUES ({', '.join('?' * len(STORED_COLUMNS))})"
LOOKUP_CHUNK = 500
RETAIN_CHUNK = 1000


def head(conn: sqlite3.Connection) -> Head:
    return Head(*conn.execute("SELECT last_seq, last_hash, first_seq, first_prev_hash FROM audit_chain").fetchone())


def append_events(conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> int:
    """Inside the sink's transaction: store the events not stored yet (drain
    rows in spool order), chained and indexed. Returns how many were new."""
    stored = _existing(conn, "event_id", [r[0] for r in rows])
    new = [r for r in rows if r[0] not in stored]
    if not new:
        return 0
    chain = head(conn)
    linked = link(new, chain, lambda positions: _existing(conn, "pos", positions))
    conn.executemany(INSERT, linked)
    texts = [(row[0], search_text(row[13], row[14])) for row in linked]
    conn.executemany("INSERT INTO audit_text_trigram (rowid, body) VALUES (?, ?)", texts)
    conn.executemany("INSERT INTO audit_text_words (rowid, body) VALUES (?, ?)",
                     [(pos, cjk_bigrams(text)) for pos, text in texts])
    conn.execute("UPDATE audit_chain SET last_seq = ?, last_hash = ?", (chain.last_seq, chain.last_hash))
    return len(new)


def _existing(conn: sqlite3.Connection, column: str, values: list[Any] | range) -> set[Any]:
    if isinstance(values, range):  # a span of positions
        return {r[0] for r in conn.execute(f"SELECT {column} FROM audit_events WHERE {column} >= ? AND {column} < ?",
                                           (values.start, values.stop))}
    found: set[Any] = set()
    for start in range(0, len(values), LOOKUP_CHUNK):
        chunk = values[start:start + LOOKUP_CHUNK]
        found.update(r[0] for r in conn.execute(
            f"SELECT {column} FROM audit_events WHERE {column} IN ({', '.join('?' * len(chunk))})", chunk))
    return found


def retain_chunk(conn: sqlite3.Connection, before: str, archive: ArchiveChunk | None = None) -> int:
    """Inside a transaction: delete up to RETAIN_CHUNK of the oldest-stored
    events, in chain order, stopping at the first that occurred at or after
    `before`. Returns how many were deleted (0: done)."""
    chain = head(conn)
    rows = conn.execute("SELECT pos, seq, occurred_at, message, details, hash FROM audit_events"
                        " WHERE seq >= ? ORDER BY seq LIMIT ?", (chain.first_seq, RETAIN_CHUNK)).fetchall()
    gone = []
    for row in rows:
        if row[2] >= before:
            break
        gone.append(row)
    if not gone:
        return 0
    if archive is not None:
        cursor = conn.execute("SELECT * FROM audit_events WHERE seq BETWEEN ? AND ? ORDER BY seq",
                              (gone[0][1], gone[-1][1]))
        rows = cursor.fetchall()
        archive(lambda sql, *args: conn.execute(sql.replace("%s", "?"), args), [d[0] for d in cursor.description],
                rows)
    for pos, _, _, message, details, _ in gone:  # a contentless table forgets a row given its indexed text
        text = search_text(message, details)
        conn.execute("INSERT INTO audit_text_trigram (audit_text_trigram, rowid, body) VALUES ('delete', ?, ?)",
                     (pos, text))
        conn.execute("INSERT INTO audit_text_words (audit_text_words, rowid, body) VALUES ('delete', ?, ?)",
                     (pos, cjk_bigrams(text)))
    conn.executemany("DELETE FROM audit_events WHERE pos = ?", [(r[0],) for r in gone])
    conn.execute("UPDATE audit_chain SET first_seq = ?, first_prev_hash = ?", (gone[-1][1] + 1, gone[-1][5]))
    return len(gone)


def _fts_string(word: str) -> str:
    """One FTS5 string: the word in double quotes, its own quotes doubled."""
    return '"' + word.replace('"', '""') + '"'


def _has_all(message: str | None, details: str | None, words: str) -> int:
    text = search_text(message, details)
    return int(all(matches(w, text) for w in words.split("\x1f")))


class SqliteAuditLog(AuditLog):
    def __init__(self, settings: SinkSettings) -> None:
        super().__init__(DirectDatabase(settings, (), SCHEMA, AuditUnavailable, "audit log",
                                        on_connect=register_functions))

    def _page_sql(self, flt: EventFilter, where: Where, limit: int) -> tuple[str, list[Any]]:
        return self._select(flt, where, limit, "DESC")

    def _export_sql(self, flt: EventFilter, where: Where, limit: int) -> tuple[str, list[Any]]:
        return self._select(flt, where, limit, "ASC")

    def _select(self, flt: EventFilter, where: Where, limit: int, order: str) -> tuple[str, list[Any]]:
        trigram = [w for w in flt.words if len(w) >= 3]
        pairs = [w for w in flt.words if len(w) < 3 and _served_by_words(w)]
        rest = [w for w in flt.words if w not in trigram and w not in pairs]
        clauses, args = list(where.clauses), list(where.args)
        if rest:
            clauses.append("audit_has_all(e.message, e.details, %s)")
            args.append("\x1f".join(rest))
        driving = ("audit_text_trigram", trigram) if trigram else ("audit_text_words", pairs) if pairs else None
        if driving is None:
            return (f"SELECT {SELECT_ANSWER} FROM audit_events e WHERE {' AND '.join(clauses) or '1=1'}"
                    f" ORDER BY e.pos {order} LIMIT %s", [*args, limit])
        table, table_words = driving
        if table == "audit_text_trigram" and pairs:
            clauses.append("EXISTS (SELECT 1 FROM audit_text_words w WHERE w.audit_text_words MATCH %s"
                           " AND w.rowid = e.pos)")
            args.append(" ".join(_fts_string(w) for w in pairs))
        # The search table drives: it yields row ids in the order asked, and the LIMIT stops it early.
        sql = (f"SELECT {SELECT_ANSWER} FROM {table} f JOIN audit_events e ON e.pos = f.rowid"
               f" WHERE f.{table} MATCH %s AND {' AND '.join(c.replace('e.pos', 'f.rowid') for c in clauses) or '1=1'}"
               f" ORDER BY f.rowid {order} LIMIT %s")
        return sql, [" ".join(_fts_string(w) for w in table_words), *args, limit]

    def index_bytes(self) -> int:
        rows = self._db.read("SELECT (SELECT coalesce(sum(length(block)), 0) FROM audit_text_trigram_data)"
                             " + (SELECT coalesce(sum(length(block)), 0) FROM audit_text_words_data)")
        return int(rows[0][0])


def _served_by_words(word: str) -> bool:
    """A word of one or two characters the word table finds: two CJK
    characters (one bigram token), or letters and digits only (whole words)."""
    if len(word) == 2 and all(is_cjk(c) for c in word):
        return True
    return word.isalnum() and not any(is_cjk(c) for c in word)


def register_functions(conn: sqlite3.Connection) -> None:
    """What the search's fallback calls on each connection that reads the log."""
    conn.create_function("audit_has_all", 3, _has_all, deterministic=True)

