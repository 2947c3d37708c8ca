"""Spool DDL, pragmas and migrations. The other modules that know the
spool's SQL are the Spool class's: wal/base.py, wal/spool.py, wal/status.py
and wal/dead_letter_table.py."""

from __future__ import annotations

import sqlite3

FORMAT_VERSION = 4

SCHEMA_V1 = """
CREATE TABLE entries (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,  -- commit order; never reused
    kind           INTEGER NOT NULL,                   -- core.records.KIND_*
    received_at_us INTEGER NOT NULL,                   -- acceptance time = default version
    record_count   INTEGER NOT NULL,
    payload        BLOB    NOT NULL                    -- the request body, validated JSON
);
CREATE TABLE state (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    clock_us            INTEGER NOT NULL DEFAULT 0,  -- last received_at_us handed out
    live_bytes          INTEGER NOT NULL DEFAULT 0,  -- payload bytes in entries
    live_sessions       INTEGER NOT NULL DEFAULT 0,
    live_tasks          INTEGER NOT NULL DEFAULT 0,
    refused_at_us       INTEGER NOT NULL DEFAULT 0,  -- an append was refused for space; 0 again after a trim
    flushed_seq         INTEGER NOT NULL DEFAULT 0,  -- every seq <= this is in the sink
    last_flush_us       INTEGER NOT NULL DEFAULT 0,
    flush_requested_seq INTEGER NOT NULL DEFAULT 0,
    heartbeat_us        INTEGER NOT NULL DEFAULT 0,  -- flusher liveness
    sink_healthy        INTEGER NOT NULL DEFAULT 0,
    sink_error          TEXT    NOT NULL DEFAULT '',
    sessions_written    INTEGER NOT NULL DEFAULT 0,  -- totals since the spool was created
    tasks_written       INTEGER NOT NULL DEFAULT 0
);
INSERT INTO state (id) VALUES (1);
CREATE TABLE held (                                   -- orphan tasks waiting for their session
    id             INTEGER PRIMARY KEY,
    task_id        TEXT    NOT NULL,
    session_id     TEXT    NOT NULL,
    received_at_us INTEGER NOT NULL,
    held_since_us  INTEGER NOT NULL,
    payload        BLOB    NOT NULL                   -- one Task as JSON
);
CREATE INDEX held_session ON held (session_id);
CREATE TABLE command_results (                        -- what a delete/status/cleanup command did
    seq        INTEGER PRIMARY KEY,
    done_at_us INTEGER NOT NULL,
    result     BLOB    NOT NULL                       -- JSON
);
CREATE TABLE dead_letters (
    id             INTEGER PRIMARY KEY,
    seq            INTEGER NOT NULL,
    kind           INTEGER NOT NULL,
    record_key     TEXT    NOT NULL,
    received_at_us INTEGER NOT NULL,
    failed_at_us   INTEGER NOT NULL,
    error          TEXT    NOT NULL,
    payload        BLOB    NOT NULL                   -- one record as JSON (or the raw entry if undecodable)
);
"""

# Format 2: orphans wait on the flusher's healthy clock (flusher/clock.py), and
# the spool counts what it held and dead-lettered, so POST /flush can say so.
MIGRATE_TO_V2 = """
ALTER TABLE state ADD COLUMN healthy_clock_us INTEGER NOT NULL DEFAULT 0;  -- time the sink was reachable
ALTER TABLE state ADD COLUMN tasks_held INTEGER NOT NULL DEFAULT 0;        -- totals since the spool was created
ALTER TABLE state ADD COLUMN records_dead INTEGER NOT NULL DEFAULT 0;
ALTER TABLE held ADD COLUMN held_at_clock_us INTEGER NOT NULL DEFAULT 0;   -- healthy_clock_us when held
"""
# Format 3: the flusher publishes the rate it drains at, for back-pressure by time.
MIGRATE_TO_V3 = """
ALTER TABLE state ADD COLUMN drain_rate REAL NOT NULL DEFAULT 0;  -- rows/s while busy (moving average); 0 = not measured
"""
# Format 4: audit events are a third kind of record waiting in the spool.
MIGRATE_TO_V4 = """
ALTER TABLE state ADD COLUMN live_events INTEGER NOT NULL DEFAULT 0;     -- audit events waiting
ALTER TABLE state ADD COLUMN events_written INTEGER NOT NULL DEFAULT 0;  -- total since the spool was created
"""
MIGRATIONS = {2: MIGRATE_TO_V2, 3: MIGRATE_TO_V3, 4: MIGRATE_TO_V4}


# The flusher checkpoints after each trim (Spool.checkpoint); a commit checkpoints by
# itself only if the WAL passes this many pages (~400 MB): a safety net for
# when the flusher is not running, off the request path otherwise.
WAL_AUTOCHECKPOINT_PAGES = 100_000


def apply_pragmas(conn: sqlite3.Connection, sync: str) -> None:
    # WAL lets the flusher read while ingest workers append (litequeue does the same).
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise sqlite3.OperationalError(f"could not switch the spool to WAL mode (got {mode})")
    # FULL fsyncs the WAL at every commit: an acknowledged batch survives power
    # loss. NORMAL fsyncs only at checkpoints: it survives any process crash.
    conn.execute(f"PRAGMA synchronous = {sync.upper()}")
    # Bound the WAL file after checkpoints so a burst does not leave it huge.
    conn.execute("PRAGMA journal_size_limit = 67108864")
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
    # Debian builds SQLite with secure_delete on: every trim would rewrite the freed
    # pages with zeros, doubling the spool's writes and needing free disk to free space.
    conn.execute("PRAGMA secure_delete = OFF")


def migrate(conn: sqlite3.Connection) -> None:
    """Create the schema on a new file, bring an older one up to date (in
    one transaction); refuse a file from a newer format."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > FORMAT_VERSION:
            raise sqlite3.DatabaseError(
                f"spool format {version} is newer than this program's {FORMAT_VERSION}")
        if version == 0:
            for statement in _statements(SCHEMA_V1):
                conn.execute(statement)
            version = 1
        for target in range(version + 1, FORMAT_VERSION + 1):
            for statement in _statements(MIGRATIONS[target]):
                conn.execute(statement)
        if version < FORMAT_VERSION:
            conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """Split a script into statements (comments may hold semicolons)."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return statements
