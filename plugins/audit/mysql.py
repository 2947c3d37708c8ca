"""The audit log on MariaDB: the events table and the chain's head on
InnoDB, and search on a Mroonga table (`mariadb-plugin-mroonga`).

Search: `audit_search` holds, per event `pos`, the searched text
(text.search_text) case-folded by Python (str.casefold), indexed as
character bigrams (TokenBigram) with no normalizer. A query word, also
case-folded, is a phrase of its bigrams, so a match is exactly text.matches
(the word occurs in the text, ignoring case): a one-character word is a
prefix search of the bigrams, which finds every occurrence. Mroonga's own
normalizers are not used: NormalizerAuto (NFKC) makes `(` match the full-width
`（` of Chinese text and `abc` match `Ａｂｃ`, and finds no `straße` for `strasse`.
Every word goes in as `+"word"` with `\\` and `"` backslash-escaped: inside a
quoted phrase Mroonga's boolean mode reads nothing else as syntax (checked
with `"` `\\` `a"b` ( ) * + - ~ < > @ OR AND NEAR % _ ' *D+ *DOR W1:10 key:value
翻译 against an oracle of text.matches).

Mroonga is not transactional: a search row written by a transaction that
then rolls back stays. Rows are upserted by pos, so the replay overwrites it,
and every search joins audit_events, which hides a row whose event is not
stored.

Reads select positions first (indexes only, in pos order, with the LIMIT) and
read whole rows for those only. A search first scans (MysqlAuditLog._search):
events in pos order, LOCATE on the indexed text, at most SCAN_ROWS_PER_ROW
rows examined per row asked (LIMIT ... ROWS EXAMINED); a word in at least
about 1 event of 50 fills the page there, a rarer one goes to the index.
"""

# Measured (2 cores; MariaDB 10.11.19, Mroonga 7.07 / Groonga 7.0.7), 1,000,000 synthetic
# events over 90 days, half English, half Chinese messages, 30% with details; pages of 100;
# p50 / p95 in ms. "shared": the server on 3306, 128 MB buffer pool (the 330 MB of rows do
# not fit: the rows of a page are read from disk, O_DIRECT); "1G": a private instance with
# testkit.mariadb's 1 GB pool.
#   written through MysqlSink.write, 1000 per transaction: 11,800-13,000 events/s
#   audit_search 118 MB (Mroonga's files); audit_events 330 MB + 170 MB of indexes
#   filtered list (one to three filters, with or without 14 days): shared 1-13 / 1-23 (the
#     worst: an actor with 30% of the events + action + outcome), 1G 1-6 / 1-14;
#     two filters as index_merge intersection + filesort: 550-2600 ms, hence the probes
#   q "session" (25% of events), "翻译" (23%), "已完成" (8%), two words (the scan): shared
#     1.3-1.6 / 1.5-2.6, 1G 1.2-1.4 / 1.3-2.7; with a filter or 14 days 1.3-7.8 / 1.5-20
#   the same through the index (shared, pages of 51): MATCH ... ORDER BY pos DESC LIMIT on
#     audit_search alone (Mroonga's fast ORDER BY LIMIT applies: Mroonga_fast_order_limit
#     counts it) 40-115 / 57-180, as every match is evaluated first; MATCH joined with
#     audit_events before the LIMIT (no fast ORDER BY LIMIT then) 110-520 / 150-850
#   rare words (0.01-0.9% of events: the index, after a 10,000-row scan): 10-37 / 13-40;
#     no match at all: 10 / 11
#   a common word with a filter it never meets (q=session, action=session.delete): 410-455 /
#     460-825, the worst shape: every match of the word probes the filter's index
#   export, in-process (MysqlAuditLog.export): 130,000 (shared) / 160,000 (1G) events/s,
#     also with q=session; peak RSS 33 MB

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import pymysql

from persistence_api.audit import StoredEvent
from core.settings import SinkSettings
from plugins.audit.chain import GENESIS, STORED_COLUMNS, Head, link
from plugins.audit.store import EXPORT_CHUNK, SELECT_ANSWER, AuditLog, AuditUnavailable, EventFilter, Where, to_event
from plugins.audit.text import search_text
from plugins.direct_db import DirectDatabase

if TYPE_CHECKING:
    from plugins import ArchiveChunk
from plugins.mysql_literal import statements

# `{collation}` is the database's (binary, no pad: keys compare byte for byte); filled in by migrate.
SCHEMA: list[str] = [
    """CREATE TABLE IF NOT EXISTS audit_events (
        pos BIGINT NOT NULL COMMENT 'newest-first order and the search row id (plugins/audit/chain.py)',
        seq BIGINT NOT NULL COMMENT 'chain position',
        event_id VARCHAR(64) NOT NULL,
        occurred_at DATETIME(6) NOT NULL,
        actor_id VARCHAR(128) NOT NULL,
        actor_type VARCHAR(16) NULL,
        action VARCHAR(64) NOT NULL,
        resource_type VARCHAR(64) NOT NULL,
        resource_id VARCHAR(255) NULL,
        outcome VARCHAR(16) NOT NULL,
        ip VARCHAR(64) NULL,
        user_agent VARCHAR(512) NULL,
        request_id VARCHAR(128) NULL,
        message TEXT NULL,
        details MEDIUMTEXT NULL COMMENT 'JSON as text, not the JSON type: the hash covers its bytes',
        stored_at DATETIME(6) NOT NULL,
        prev_hash CHAR(64) NOT NULL,
        hash CHAR(64) NOT NULL,
        PRIMARY KEY (pos),
        UNIQUE KEY uq_audit_seq (seq),
        UNIQUE KEY uq_audit_event_id (event_id),
        KEY idx_audit_actor (actor_id),
        KEY idx_audit_action (action),
        KEY idx_audit_resource_type (resource_type),
        KEY idx_audit_resource_id (resource_id),
        KEY idx_audit_outcome (outcome)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={collation}""",
    """CREATE TABLE IF NOT EXISTS audit_chain (
        id TINYINT NOT NULL PRIMARY KEY CHECK (id = 1),
        last_seq BIGINT NOT NULL, last_hash CHAR(64) NOT NULL,
        first_seq BIGINT NOT NULL, first_prev_hash CHAR(64) NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={collation}""",
    f"INSERT IGNORE INTO audit_chain VALUES (1, 0, '{GENESIS}', 1, '{GENESIS}')",
    """CREATE TABLE IF NOT EXISTS audit_search (
        pos BIGINT NOT NULL PRIMARY KEY,
        body MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL COMMENT 'search_text, case-folded',
        FULLTEXT INDEX ft_body (body) COMMENT 'tokenizer "TokenBigram", normalizer "none"'
    ) ENGINE=Mroonga DEFAULT CHARSET=utf8mb4""",
]
MROONGA_LOADED = ("SELECT ENGINE FROM information_schema.ENGINES"
                  " WHERE ENGINE = 'Mroonga' AND SUPPORT IN ('YES', 'DEFAULT')")
HEAD = "SELECT last_seq, last_hash, first_seq, first_prev_hash FROM audit_chain WHERE id = 1"
INSERT_EVENTS = f"INSERT INTO audit_events ({', '.join(STORED_COLUMNS)}) VALUES "
INSERT_SEARCH = "INSERT INTO audit_search (pos, body) VALUES "
UPSERT_SEARCH = " ON DUPLICATE KEY UPDATE body = VALUES(body)"
SORT_ABORTED = 1028  # how ROWS EXAMINED ends a statement that sorts (the scan should not)
LOOKUP_CHUNK = 1000
RETAIN_CHUNK = 1000
DEFAULT_STATEMENT_BYTES = 1024 * 1024
SCAN_ROWS_PER_ROW = 50  # a search scans first: a word in 1 event of 50 fills the page there
SCAN_MIN_ROWS = 10_000
INDEX_OF = {"actor_id": "idx_audit_actor", "action": "idx_audit_action", "resource_type": "idx_audit_resource_type",
            "resource_id": "idx_audit_resource_id", "outcome": "idx_audit_outcome"}
# Groonga reads text up to a NUL only: the indexed text has U+001E for NUL, and U+001F for
# U+001E, so it is exact. A word never holds either (str.split splits at both), and a NUL
# in a word becomes U+001E, which the indexed text holds only where the text has a NUL.
_NUL_FREE = {0: 0x1E, 0x1E: 0x1F}


class MroongaMissing(AuditUnavailable):
    """The server cannot load Mroonga, which audit search needs."""


def ensure_mroonga(cur: Any) -> None:
    """Load Mroonga when the server has not (INSTALL SONAME needs the package and the privilege)."""
    cur.execute(MROONGA_LOADED)
    if cur.fetchone():
        return
    try:
        cur.execute("INSTALL SONAME 'ha_mroonga'")
    except pymysql.err.MySQLError as exc:
        cur.execute(MROONGA_LOADED)  # another process may have loaded it meanwhile
        if cur.fetchone():
            return
        raise MroongaMissing(f"audit log: the Mroonga storage engine is not loaded and INSTALL SONAME"
                             f" 'ha_mroonga' failed ({exc}): install the package mariadb-plugin-mroonga on"
                             f" the database server") from exc


def migrate(cur: Any, collation: str) -> None:
    """The audit tables, when missing (Mroonga loaded first)."""
    ensure_mroonga(cur)
    for statement in SCHEMA:
        cur.execute(statement.format(collation=collation))


def head(cur: Any) -> Head:
    """The chain's head, locked until the transaction ends."""
    cur.execute(HEAD + " FOR UPDATE")
    row = cur.fetchone()
    if row is None:
        raise RuntimeError("audit_chain has no head row: the audit schema was not migrated")
    return Head(*row)


def append_events(cur: Any, rows: Sequence[Sequence[Any]], max_bytes: int = DEFAULT_STATEMENT_BYTES) -> int:
    """Inside the sink's transaction: store the events not stored yet (drain
    rows in spool order; of two with one event_id the first), chained and
    indexed. Returns how many were new."""
    chain = head(cur)  # first: appends are serialized, and what is stored below is what they committed
    stored = _existing(cur, "event_id", [r[0] for r in rows])
    new = list({r[0]: r for r in reversed(rows) if r[0] not in stored}.values())[::-1]
    if not new:
        return 0
    linked = link(new, chain, lambda positions: _existing(cur, "pos", positions))
    for statement in statements(INSERT_EVENTS, [tuple(r) for r in linked], "", max_bytes):
        cur.execute(statement)
    # After the InnoDB rows: a failure there leaves nothing behind in the non-transactional table.
    texts = [(r[0], indexed_text(r[13], r[14])) for r in linked]
    for statement in statements(INSERT_SEARCH, texts, UPSERT_SEARCH, max_bytes):
        cur.execute(statement)
    cur.execute("UPDATE audit_chain SET last_seq = %s, last_hash = %s WHERE id = 1", (chain.last_seq, chain.last_hash))
    return len(new)


def _existing(cur: Any, column: str, values: list[Any] | range) -> set[Any]:
    if isinstance(values, range):  # a span of positions
        cur.execute(f"SELECT {column} FROM audit_events WHERE {column} >= %s AND {column} < %s",
                    (values.start, values.stop))
        return {r[0] for r in cur.fetchall()}
    found: set[Any] = set()
    for start in range(0, len(values), LOOKUP_CHUNK):
        cur.execute(f"SELECT {column} FROM audit_events WHERE {column} IN %s", (values[start:start + LOOKUP_CHUNK],))
        found.update(r[0] for r in cur.fetchall())
    return found


def retain_chunk(cur: Any, before: str, archive: ArchiveChunk | None = None) -> int:
    """Inside a transaction: delete up to RETAIN_CHUNK of the oldest-stored
    events, in chain order, stopping at the first that occurred at or after
    `before`. Returns how many were deleted (0: done)."""
    chain = head(cur)
    cur.execute("SELECT pos, seq, occurred_at < %s, hash FROM audit_events WHERE seq >= %s ORDER BY seq LIMIT %s",
                (before, chain.first_seq, RETAIN_CHUNK))
    gone = []
    for row in cur.fetchall():
        if not row[2]:
            break
        gone.append(row)
    if not gone:
        return 0
    positions = [r[0] for r in gone]
    if archive is not None:
        cur.execute("SELECT * FROM audit_events WHERE seq BETWEEN %s AND %s ORDER BY seq", (gone[0][1], gone[-1][1]))
        rows = [tuple(r) for r in cur.fetchall()]
        archive(lambda sql, *args: cur.execute(sql, args), [d[0] for d in cur.description], rows)
    cur.execute("DELETE FROM audit_events WHERE pos IN %s", (positions,))
    cur.execute("UPDATE audit_chain SET first_seq = %s, first_prev_hash = %s WHERE id = 1",
                (gone[-1][1] + 1, gone[-1][3]))
    cur.execute("DELETE FROM audit_search WHERE pos IN %s", (positions,))  # last: it cannot be rolled back
    return len(gone)


def indexed_text(message: str | None, details: str | None) -> str:
    """The searched text as audit_search holds it: case-folded, NUL written as U+001E."""
    return search_text(message, details).casefold().translate(_NUL_FREE)


def against(words: Iterable[str]) -> str:
    """A boolean-mode query in which every word must occur, each as literal text."""
    return " ".join('+"' + _indexed_word(w).replace("\\", "\\\\").replace('"', '\\"') + '"' for w in words)


def _indexed_word(word: str) -> str:
    """A word as the indexed text would hold it."""
    return word.casefold().replace("\0", "\x1e")


class MysqlAuditLog(AuditLog):
    """Reads. A page or an export chunk with words first scans (_scan): the
    events the filters select, in pos order, with LOCATE on the indexed text,
    stopping after SCAN_ROWS_PER_ROW rows examined per row asked. A common
    word fills it there; a rarer one is then found through the Mroonga index
    (_select), whose cost grows with the word's matches."""

    def __init__(self, settings: SinkSettings) -> None:
        super().__init__(DirectDatabase(settings, SCHEMA, "", AuditUnavailable, "audit log",
                                        on_connect=_LoadMroonga()))

    def page(self, flt: EventFilter, before_pos: int | None, limit: int) -> tuple[list[StoredEvent], int | None]:
        if not flt.words:
            return super().page(flt, before_pos, limit)
        rows = self._search(flt, self._where(flt, before_pos=before_pos), limit + 1, "DESC")
        more = len(rows) > limit
        rows = rows[:limit]
        return [to_event(r) for r in rows], rows[-1][-1] if more else None

    def export(self, flt: EventFilter) -> Iterator[list[StoredEvent]]:
        if not flt.words:
            yield from super().export(flt)
            return
        after: int | None = None
        while True:
            rows = self._search(flt, self._where(flt, after_pos=after), EXPORT_CHUNK, "ASC")
            if rows:
                yield [to_event(r) for r in rows]
            if len(rows) < EXPORT_CHUNK:
                return
            after = rows[-1][-1]

    def _page_sql(self, flt: EventFilter, where: Where, limit: int) -> tuple[str, list[Any]]:
        return _select(flt.words, where, limit, "DESC")

    def _export_sql(self, flt: EventFilter, where: Where, limit: int) -> tuple[str, list[Any]]:
        return _select(flt.words, where, limit, "ASC")

    def _search(self, flt: EventFilter, where: Where, limit: int, order: str) -> list[Any]:
        sql, args = _scan(flt.words, where, limit, order)
        with self._db.connection() as conn:
            cur = conn.cursor()
            try:
                cur.execute(sql, args)
                rows = list(cur.fetchall())
                stopped = cur.warning_count > 0  # 1931: the scan reached its ROWS EXAMINED
            except pymysql.err.OperationalError as exc:
                if exc.args[0] != SORT_ABORTED:
                    raise
                rows, stopped = [], True
            conn.rollback()
        if len(rows) >= limit or not stopped:
            return rows
        sql, args = _select(flt.words, where, limit, order)
        return self._db.read(sql, *args)

    def index_bytes(self) -> int:
        # What Mroonga reports for its table (information_schema, as SHOW TABLE STATUS): the disk
        # size of the files holding the search table, its body column and the FULLTEXT index
        # (lexicon and posting lists), space Groonga has allocated ahead included.
        rows = self._db.read("SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.TABLES"
                             " WHERE table_schema = DATABASE() AND table_name = 'audit_search'")
        return int(rows[0][0])


# -- the statements ------------------------------------------------------------------------
# From store.Where ("e.actor_id = %s", "e.pos < %s", "e.occurred_at >= %s": one mark each):
# the filters an index serves, pos bounds, and conditions on the row. Every shape selects
# positions first, in pos order with the LIMIT, and reads the answer's rows for those only.
# A filter's index holds (value, pos): "f.pos = x.pos AND f.column = value" is one probe of
# it, no row read (FORCE INDEX: the optimizer would rather read the row by primary key).
# Each shape joins audit_events before the LIMIT, so a search row whose event is not stored
# (not committed yet, or rolled back) never counts.


class _Select:
    """A FROM with its joins and a WHERE, each with its arguments, in statement order."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.join_args: list[Any] = []
        self.conditions = ["1=1"]
        self.condition_args: list[Any] = []

    def join(self, sql: str, *args: Any) -> None:
        self.source += sql
        self.join_args += args

    def where(self, condition: str, *args: Any) -> None:
        self.conditions.append(condition)
        self.condition_args += args

    def sql(self) -> str:
        return f"{self.source} WHERE {' AND '.join(self.conditions)}"

    def args(self) -> list[Any]:
        return [*self.join_args, *self.condition_args]


class _Parts(NamedTuple):
    filters: list[tuple[str, Any]]  # (column, value), each served by INDEX_OF[column]
    bounds: list[tuple[str, Any]]  # ("pos >= %s", value)
    on_row: list[tuple[str, Any]]  # ("occurred_at < %s", value): the row must be read

    def add(self, q: _Select, alias: str, row_alias: str | None = None, drive: bool = True) -> None:
        """The filters (the first driving, in its index, unless drive is False), the bounds
        on `alias`, and the row conditions on `row_alias` (joined by primary key if None)."""
        probes = self.filters
        if drive and self.filters:
            (column, value), probes = self.filters[0], self.filters[1:]
            q.where(f"{alias}.{column} = %s", value)
        for i, (column, value) in enumerate(probes):
            q.join(f" JOIN audit_events f{i} FORCE INDEX ({INDEX_OF[column]})"
                   f" ON f{i}.pos = {alias}.pos AND f{i}.{column} = %s", value)
        for condition, value in self.bounds:
            q.where(f"{alias}.{condition}", value)
        if self.on_row and row_alias is None:
            row_alias = "r"
            q.join(f" JOIN audit_events r ON r.pos = {alias}.pos")
        for condition, value in self.on_row:
            q.where(f"{row_alias}.{condition}", value)


def _parts(where: Where) -> _Parts:
    parts = _Parts([], [], [])
    for clause, arg in zip(where.clauses, where.args, strict=True):
        column, condition = clause[len("e."):].split(" ", 1)
        if column == "pos":
            parts.bounds.append((f"pos {condition}", arg))
        elif column in INDEX_OF and condition == "= %s":
            parts.filters.append((column, arg))
        else:
            parts.on_row.append((f"{column} {condition}", arg))
    return parts


def _rows_of(keys: _Select, alias: str, order: str, limit: int) -> tuple[str, list[Any]]:
    """The answer's rows for the first `limit` positions that keys selects."""
    return (f"SELECT {SELECT_ANSWER} FROM (SELECT {alias}.pos FROM {keys.sql()} ORDER BY {alias}.pos {order}"
            f" LIMIT %s) k JOIN audit_events e ON e.pos = k.pos ORDER BY e.pos {order}", [*keys.args(), limit])


def _select(words: Sequence[str], where: Where, limit: int, order: str) -> tuple[str, list[Any]]:
    """One statement, complete whatever the data: the filters alone, or the Mroonga index."""
    parts = _parts(where)
    if not words and not parts.filters:  # the primary key is in pos order
        return (f"SELECT {SELECT_ANSWER} FROM audit_events e WHERE {where.sql()} ORDER BY e.pos {order} LIMIT %s",
                [*where.args, limit])
    if not words:  # a filter's index (value, pos), in pos order, drives; the others are probed
        q = _Select(f"audit_events d FORCE INDEX ({INDEX_OF[parts.filters[0][0]]})")
        parts.add(q, "d")
        return _rows_of(q, "d", order, limit)
    # Mroonga finds every match (the costly part for a common word), the probes filter them,
    # and only then are they sorted: Mroonga's fast ORDER BY LIMIT needs the search table alone.
    q = _Select("audit_search s")
    q.where("MATCH(s.body) AGAINST(%s IN BOOLEAN MODE)", against(words))
    if not parts.filters and not parts.on_row:
        q.join(" JOIN audit_events r ON r.pos = s.pos")  # stored
    parts.add(q, "s", drive=False)
    return _rows_of(q, "s", order, limit)


def _scan(words: Sequence[str], where: Where, limit: int, order: str) -> tuple[str, list[Any]]:
    """The first `limit` events in pos order whose text holds every word (LOCATE on the
    indexed text), looking at no more than SCAN_ROWS_PER_ROW * limit rows: MariaDB then
    stops with warning 1931. The join order is fixed, so that the first table's order is
    the answer's (a sort would turn the stop into error 1028), and an event's row is read
    only once its text matched."""
    parts = _parts(where)
    if parts.filters:  # a filter's index drives
        alias, q = "d", _Select(f"audit_events d FORCE INDEX ({INDEX_OF[parts.filters[0][0]]})")
    else:  # the search table in pos order
        alias, q = "s", _Select("audit_search s")
    parts.add(q, alias, row_alias="e")
    if alias == "d":
        q.join(" STRAIGHT_JOIN audit_search s ON s.pos = d.pos")
    q.join(f" STRAIGHT_JOIN audit_events e ON e.pos = {alias}.pos")
    for word in words:
        q.where("LOCATE(%s, s.body) > 0", _indexed_word(word))
    budget = max(SCAN_MIN_ROWS, SCAN_ROWS_PER_ROW * limit)
    return (f"SELECT {SELECT_ANSWER} FROM {q.sql()} ORDER BY {alias}.pos {order} LIMIT %s ROWS EXAMINED {budget}",
            [*q.args(), limit])


class _LoadMroonga:
    """DirectDatabase's on_connect: Mroonga loaded before the first connection migrates."""

    def __init__(self) -> None:
        self.done = False

    def __call__(self, conn: Any) -> None:
        if self.done:
            return
        try:
            with conn.cursor() as cur:
                ensure_mroonga(cur)
        except BaseException:
            conn.close()
            raise
        self.done = True
