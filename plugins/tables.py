"""Table contracts: for each record kind, the table that stores it, declared
once for both backends: its columns in row order (the key first, the two
times last), how a record becomes a row, its DDL on MySQL/MariaDB and on
SQLite, and the indexes the readers add. The sinks build their upserts and
schemas from these; the readers their select lists.

Times are stored as DATETIME(6)-style text in UTC (core.times.db_text);
`updated_at` is the record's version, `created_at` when the service first
accepted its key. The upsert tables also store `version_node` (VERSION_NODE),
which the sinks write and the readers do not select.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from msgspec import Struct

from persistence_api.audit import AuditEvent
from core.kinds import AUDIT_EVENTS, SESSIONS, TASKS, RecordKind
from core.records import JSON_ENCODER
from persistence_api.translation import JsonObject, Session, Task
from core.times import db_text, to_us

Row = tuple
# The node (sink.node_id) whose write a row holds. Versions compare as (updated_at, version_node): of two writes
# of a key with the same updated_at through two nodes, the higher node's wins whichever is flushed last, so every
# flush order ends with the same row. Not one of Table.columns: the sinks append it, the readers leave it out.
VERSION_NODE = "version_node"


class ReadIndex(Struct, frozen=True):
    """An index the readers need and the writers do not: added online at start."""
    name: str
    mysql_columns: str
    sqlite_columns: str


@dataclass(frozen=True, eq=False)
class Table:
    kind: RecordKind
    name: str
    columns: tuple[str, ...]  # row order; columns[0] is the key
    to_row: Callable[[Any, int, int], Row]  # (record, version us, created us) -> row
    mysql_columns: str  # the body of CREATE TABLE, indexes included
    sqlite_columns: str
    sqlite_indexes: tuple[str, ...] = ()  # (column list) per write-side index
    json_columns: tuple[str, ...] = ()  # stored JSON: read back as its text
    read_indexes: tuple[ReadIndex, ...] = ()
    session_column: str | None = None  # the translation session a row belongs to (a session delete ends it)

    @property
    def key(self) -> str:
        return self.columns[0]

    @property
    def write_columns(self) -> tuple[str, ...]:
        """The columns a sink writes: an upserted row carries its node last."""
        return self.columns + (VERSION_NODE,) if self.kind.write == "upsert" else self.columns

    def select_list(self, prefix: str = "", as_json: bool = False) -> str:
        """The columns to select; as_json: one JSON array per row instead, with
        stored JSON as text (JSON_ARRAY would embed it as a value)."""
        if not as_json:
            return ", ".join(prefix + c for c in self.columns)
        listed = ", ".join(f"CAST({prefix}{c} AS CHAR CHARACTER SET utf8mb4)" if c in self.json_columns
                           else prefix + c for c in self.columns)
        return f"JSON_ARRAY({listed})"


def _json_or_none(value: JsonObject | None) -> str | None:
    return None if value is None else JSON_ENCODER.encode(value).decode()


def _time_or_none(value: datetime | None) -> str | None:
    return None if value is None else db_text(to_us(value))


def session_row(s: Session, version: int, created_us: int) -> Row:
    return (s.session_id, s.filename, s.file_path, s.status, s.llm_provider,
            _json_or_none(s.game_info), _json_or_none(s.metadata), s.total_tasks,
            s.completed_tasks, s.failed_tasks, s.processing_tasks, db_text(created_us), db_text(version))


def task_row(t: Task, version: int, created_us: int) -> Row:
    confidence = None if t.confidence is None else round(t.confidence, 4)
    return (t.task_id, t.session_id, t.batch_id, t.sheet_name, t.row_index, t.column_name,
            t.source_text, t.target_text, t.context, t.status, confidence, t.error_message,
            t.retry_count, _time_or_none(t.start_time), _time_or_none(t.end_time), t.duration_ms,
            db_text(created_us), db_text(version))


SESSION_TABLE = Table(
    kind=SESSIONS, name="translation_sessions",
    columns=("session_id", "filename", "file_path", "status", "llm_provider", "game_info", "metadata",
             "total_tasks", "completed_tasks", "failed_tasks", "processing_tasks", "created_at", "updated_at"),
    to_row=session_row, session_column="session_id",
    mysql_columns="""
        session_id VARCHAR(36) NOT NULL PRIMARY KEY,
        filename VARCHAR(255) NOT NULL,
        file_path VARCHAR(512) NOT NULL,
        status ENUM('pending','processing','completed','failed','cancelled') NOT NULL,
        llm_provider VARCHAR(50) NOT NULL,
        game_info JSON NULL,
        metadata JSON NULL,
        total_tasks BIGINT UNSIGNED NOT NULL DEFAULT 0,
        completed_tasks BIGINT UNSIGNED NOT NULL DEFAULT 0,
        failed_tasks BIGINT UNSIGNED NOT NULL DEFAULT 0,
        processing_tasks BIGINT UNSIGNED NOT NULL DEFAULT 0,
        created_at DATETIME(6) NOT NULL,
        updated_at DATETIME(6) NOT NULL COMMENT 'the record version',
        version_node SMALLINT UNSIGNED NOT NULL DEFAULT 0 COMMENT 'the node that wrote it: wins ties in updated_at',
        KEY idx_sessions_status_created (status, created_at),
        KEY idx_sessions_created (created_at),
        KEY idx_sessions_updated (updated_at),
        KEY idx_read_sessions_status_updated (status, updated_at)""",
    sqlite_columns="""
        session_id TEXT PRIMARY KEY, filename TEXT NOT NULL, file_path TEXT NOT NULL,
        status TEXT NOT NULL, llm_provider TEXT NOT NULL, game_info TEXT, metadata TEXT,
        total_tasks INTEGER NOT NULL DEFAULT 0, completed_tasks INTEGER NOT NULL DEFAULT 0,
        failed_tasks INTEGER NOT NULL DEFAULT 0, processing_tasks INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, version_node INTEGER NOT NULL DEFAULT 0""",
    sqlite_indexes=("idx_sessions_status_created (status, created_at)", "idx_sessions_created (created_at)",
                    "idx_sessions_updated (updated_at)"),
    json_columns=("game_info", "metadata"),
    read_indexes=(ReadIndex("idx_read_sessions_status_updated", "status, updated_at", "status, updated_at"),),
)

TASK_TABLE = Table(
    kind=TASKS, name="translation_tasks",
    columns=("task_id", "session_id", "batch_id", "sheet_name", "row_index", "column_name", "source_text",
             "target_text", "context", "status", "confidence", "error_message", "retry_count",
             "start_time", "end_time", "duration_ms", "created_at", "updated_at"),
    to_row=task_row, session_column="session_id",
    mysql_columns="""
        task_id VARCHAR(64) NOT NULL PRIMARY KEY,
        session_id VARCHAR(36) NOT NULL,
        batch_id VARCHAR(64) NOT NULL,
        sheet_name VARCHAR(255) NOT NULL,
        row_index BIGINT UNSIGNED NOT NULL,
        column_name VARCHAR(255) NOT NULL,
        source_text TEXT NOT NULL,
        target_text TEXT NULL,
        context TEXT NULL,
        status ENUM('pending','processing','completed','failed') NOT NULL,
        confidence DECIMAL(5,4) NULL,
        error_message TEXT NULL,
        retry_count BIGINT UNSIGNED NOT NULL DEFAULT 0,
        start_time DATETIME(6) NULL,
        end_time DATETIME(6) NULL,
        duration_ms BIGINT UNSIGNED NULL,
        created_at DATETIME(6) NOT NULL,
        updated_at DATETIME(6) NOT NULL COMMENT 'the record version',
        version_node SMALLINT UNSIGNED NOT NULL DEFAULT 0 COMMENT 'the node that wrote it: wins ties in updated_at',
        KEY idx_tasks_session_order (session_id, sheet_name, row_index, column_name),
        KEY idx_tasks_session_status (session_id, status),
        KEY idx_tasks_status_created (status, created_at),
        KEY idx_read_tasks_created (created_at),
        KEY idx_read_tasks_session_created (session_id, created_at)""",
    sqlite_columns="""
        task_id TEXT PRIMARY KEY, session_id TEXT NOT NULL, batch_id TEXT NOT NULL,
        sheet_name TEXT NOT NULL, row_index INTEGER NOT NULL, column_name TEXT NOT NULL,
        source_text TEXT NOT NULL, target_text TEXT, context TEXT, status TEXT NOT NULL,
        confidence REAL, error_message TEXT, retry_count INTEGER NOT NULL DEFAULT 0,
        start_time TEXT, end_time TEXT, duration_ms INTEGER,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, version_node INTEGER NOT NULL DEFAULT 0""",
    sqlite_indexes=("idx_tasks_session_order (session_id, sheet_name, row_index, column_name)",
                    "idx_tasks_session_status (session_id, status)", "idx_tasks_status_created (status, created_at)"),
    read_indexes=(ReadIndex("idx_read_tasks_created", "created_at", "created_at, task_id"),
                  ReadIndex("idx_read_tasks_session_created", "session_id, created_at",
                            "session_id, created_at, task_id")),
)



def event_row(e: AuditEvent, version: int, accepted_us: int) -> Row:
    """The event as accepted (plugins/audit/chain.py EVENT_ROW); the sink gives it its place in the chain."""
    assert e.occurred_at is not None  # ingest filled it in
    return (e.event_id, to_us(e.occurred_at), e.actor_id, e.actor_type, e.action, e.resource_type, e.resource_id,
            e.outcome, e.ip, e.user_agent, e.request_id, e.message, _json_or_none(e.details), accepted_us)


# Append-only and hash-chained: each sink writes it through plugins/audit/ (its
# own schema there, with the chain head and the search index), not the upsert.
AUDIT_TABLE = Table(
    kind=AUDIT_EVENTS, name="audit_events",
    columns=("event_id", "occurred_us", "actor_id", "actor_type", "action", "resource_type", "resource_id",
             "outcome", "ip", "user_agent", "request_id", "message", "details", "stored_us"),
    to_row=event_row, mysql_columns="(plugins/audit/mysql.py)", sqlite_columns="(plugins/audit/sqlite.py)",
)

# Every table, in the order a drain writes them (a parent before its children).
TABLES: tuple[Table, ...] = (SESSION_TABLE, TASK_TABLE, AUDIT_TABLE)

# A deleted session's tombstone: when the delete was accepted. A write of the session or of its tasks accepted
# before then, still on its way through another node's spool, must not bring it back (DESIGN.md, several
# nodes); one accepted after it is a new session of the same id. One row per explicit DELETE, kept.
SESSION_DELETES = "translation_session_deletes"
SESSION_DELETES_MYSQL = (f"CREATE TABLE IF NOT EXISTS {SESSION_DELETES} (session_id VARCHAR(36) NOT NULL PRIMARY KEY,"
                         " deleted_at_us BIGINT NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={collation}")
SESSION_DELETES_SQLITE = (f"CREATE TABLE IF NOT EXISTS {SESSION_DELETES} (session_id TEXT NOT NULL PRIMARY KEY,"
                          " deleted_at_us INTEGER NOT NULL);\n")
# The tables written by the versioned upsert; the others are append-only (plugins/audit/).
UPSERT_TABLES: tuple[Table, ...] = tuple(table for table in TABLES if table.kind.write == "upsert")
TABLE_OF: dict[str, Table] = {table.kind.name: table for table in TABLES}


class TableRows(Struct):
    """Rows for one table, sorted by key: what Sink.write takes, one per table, in TABLES order.
    accepted_us, when given, says when each row's record was accepted: a row accepted before its
    session's delete is not written (see SESSION_DELETES)."""
    table: Table
    rows: list[Row]
    accepted_us: list[int] = msgspec.field(default_factory=list)


def deleted_sessions_in(batch: Sequence[TableRows]) -> set[str]:
    """The sessions the rows of this batch that carry acceptance times belong to."""
    ids: set[str] = set()
    for part in batch:
        if part.accepted_us and part.table.session_column is not None:
            column = part.table.columns.index(part.table.session_column)
            ids.update(row[column] for row in part.rows)
    return ids


def rows_left(batch: Sequence[TableRows], deleted: dict[str, int]) -> int:
    return sum(len(part.rows) for part in without_deleted(batch, deleted))


def without_deleted(batch: Sequence[TableRows], deleted: dict[str, int]) -> list[TableRows]:
    """The batch without the rows accepted before their session was deleted (deleted: id -> when)."""
    if not deleted:
        return list(batch)
    out = []
    for part in batch:
        if not part.accepted_us or part.table.session_column is None:
            out.append(part)
            continue
        column = part.table.columns.index(part.table.session_column)
        kept = [(row, at) for row, at in zip(part.rows, part.accepted_us) if at > deleted.get(row[column], -1)]
        out.append(TableRows(part.table, [row for row, _ in kept], [at for _, at in kept]))
    return out
