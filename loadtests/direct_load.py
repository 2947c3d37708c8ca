"""The drain comparison's yardsticks: the spool's own entries loaded straight
into MariaDB, batched as the flusher batches them (whole entries, up to 1000
records, one transaction each), by

1. pymysql executemany() of plugins.mysql's own upsert (one multi-row
   INSERT ... ON DUPLICATE KEY UPDATE per batch, as pymysql rewrites it), and
2. LOAD DATA LOCAL INFILE of a TSV file into a temporary staging table, then
   INSERT ... SELECT ... ON DUPLICATE KEY UPDATE with the same version guard.

Both include the Python side the service must do too: decoding the spooled
JSON (core.kinds) and building rows (plugins.tables).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pymysql

from core.kinds import BY_ENTRY_KIND
from testkit.mariadb import PrivateMariaDB
from plugins.mysql import ISOLATION, SESSION_INIT, UPSERTS
from plugins.tables import SESSION_TABLE, TABLE_OF, TASK_TABLE

SESSION_UPSERT, TASK_UPSERT = UPSERTS[SESSION_TABLE.name], UPSERTS[TASK_TABLE.name]
SESSION_COLUMNS, TASK_COLUMNS = SESSION_TABLE.write_columns, TASK_TABLE.write_columns  # the rows carry node 0

Entry = tuple[int, int, int, int, bytes]  # seq, kind, received_at_us, record_count, payload
BATCH_ROWS = 1000
MAX_STATEMENT_BYTES = 60 * 1024 * 1024  # below max_allowed_packet (64M): one INSERT per batch


def read_spool(path: Path) -> list[Entry]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT seq, kind, received_at_us, record_count, payload FROM entries ORDER BY seq").fetchall()
    finally:
        conn.close()


def batches(entries: Iterable[Entry], max_rows: int = BATCH_ROWS) -> Iterator[list[Entry]]:
    """Whole entries, up to max_rows records each (Spool.read's rule)."""
    batch: list[Entry] = []
    rows = 0
    for entry in entries:
        if batch and rows + entry[3] > max_rows:
            yield batch
            batch, rows = [], 0
        batch.append(entry)
        rows += entry[3]
        if rows >= max_rows:
            yield batch
            batch, rows = [], 0
    if batch:
        yield batch


def batch_rows(batch: list[Entry]) -> tuple[list[tuple], list[tuple]]:
    """Session and task rows of one batch (with version_node 0), last write per key, sorted by key as the
    flusher writes them."""
    rows: dict[str, dict[str, tuple]] = {"session": {}, "task": {}}
    for _seq, entry_kind, received, _count, payload in batch:
        kind = BY_ENTRY_KIND[entry_kind]
        table = TABLE_OF[kind.name]
        for record in kind.decode(payload):
            rows[kind.name][kind.key(record)] = table.to_row(record, kind.version(record, received), received) + (0,)
    sessions, tasks = rows["session"], rows["task"]
    return [sessions[k] for k in sorted(sessions)], [tasks[k] for k in sorted(tasks)]


def executemany_sql(upsert: str | tuple[str, str], columns: int) -> str:
    """plugins.mysql's upsert as one executemany() statement: depending on the
    service version it is a string, or a (prefix, suffix) pair around the rows."""
    if isinstance(upsert, str):
        return upsert
    prefix, suffix = upsert
    return f"{prefix}({', '.join(['%s'] * columns)}){suffix}"


def _connect(mariadb: PrivateMariaDB, database: str, **extra: Any) -> pymysql.connections.Connection:
    conn = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", database=database,
                           charset="utf8mb4", autocommit=False, init_command=SESSION_INIT, **extra)
    with conn.cursor() as cur:
        cur.execute(ISOLATION)
    return conn


def load_executemany(mariadb: PrivateMariaDB, database: str, entries: list[Entry], folder: Path) -> int:
    """Method (1); returns the rows written."""
    session_sql = executemany_sql(SESSION_UPSERT, len(SESSION_COLUMNS))
    task_sql = executemany_sql(TASK_UPSERT, len(TASK_COLUMNS))
    conn = _connect(mariadb, database)
    loaded = 0
    try:
        for batch in batches(entries):
            sessions, tasks = batch_rows(batch)
            with conn.cursor() as cur:
                cur.max_stmt_length = MAX_STATEMENT_BYTES
                if sessions:
                    cur.executemany(session_sql, sessions)
                if tasks:
                    cur.executemany(task_sql, tasks)
            conn.commit()
            loaded += len(sessions) + len(tasks)
    finally:
        conn.close()
    return loaded


def tsv_field(value: Any) -> str:
    """LOAD DATA's default format: \\N is NULL; backslash, tab, newline, CR and NUL escaped."""
    if value is None:
        return "\\N"
    if value.__class__ is not str:
        return str(value)
    return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r").replace("\0", "\\0"))


def tsv(rows: list[tuple]) -> bytes:
    """The rows as LOAD DATA input. Fast path: join without escaping, then
    prove nothing needed it (every tab, newline and backslash in the text is
    one we put there); otherwise escape field by field."""
    text = "\n".join(["\t".join(["\\N" if v is None else v if v.__class__ is str else str(v) for v in row])
                      for row in rows])
    fields = sum(len(row) for row in rows)
    nulls = sum(v is None for row in rows for v in row)
    if (text.count("\t") == fields - len(rows) and text.count("\n") == len(rows) - 1
            and text.count("\\") == nulls and "\r" not in text and "\0" not in text):
        return (text + "\n").encode()
    return "".join("\t".join(map(tsv_field, row)) + "\n" for row in rows).encode()


def upsert_from(table: str, columns: tuple[str, ...], source: str) -> str:
    """INSERT ... SELECT ... ON DUPLICATE KEY UPDATE, version-guarded like
    plugins.mysql (target columns qualified: the source has the same names)."""
    t = table
    keep = [c for c in columns[1:] if c not in ("created_at", "updated_at")]
    guarded = ", ".join(f"{c} = IF(VALUES(updated_at) >= {t}.updated_at, VALUES({c}), {t}.{c})" for c in keep)
    cols = ", ".join(columns)
    return (f"INSERT INTO {t} ({cols}) SELECT {cols} FROM {source}"
            f" ON DUPLICATE KEY UPDATE {guarded}, created_at = LEAST({t}.created_at, VALUES(created_at)),"
            f" updated_at = GREATEST({t}.updated_at, VALUES(updated_at))")


def load_data_infile(mariadb: PrivateMariaDB, database: str, entries: Iterable[Entry], folder: Path) -> int:
    """Method (2): per batch LOAD DATA into the staging table, INSERT ... SELECT,
    COMMIT, then empty the staging table. Returns the rows written.

    The staging table is a temporary Aria table (not transactional, no
    secondary indexes): loading it and emptying it with TRUNCATE costs far
    less than an InnoDB one emptied with DELETE (measured: the DELETE alone
    took about 15 us per row)."""
    session_sql = executemany_sql(SESSION_UPSERT, len(SESSION_COLUMNS))
    path = folder / "batch.tsv"
    load_sql = (f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE tasks_stage CHARACTER SET utf8mb4"
                f" FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({', '.join(TASK_COLUMNS)})")
    merge_sql = upsert_from("translation_tasks", TASK_COLUMNS, "tasks_stage")
    conn = _connect(mariadb, database, local_infile=True)
    loaded = 0
    try:
        with conn.cursor() as cur:  # same columns, no indexes
            cur.execute("CREATE TEMPORARY TABLE tasks_stage ENGINE=Aria SELECT * FROM translation_tasks LIMIT 0")
        for batch in batches(entries):
            sessions, tasks = batch_rows(batch)
            with conn.cursor() as cur:
                if sessions:
                    cur.executemany(session_sql, sessions)
                if tasks:
                    path.write_bytes(tsv(tasks))
                    cur.execute(load_sql)
                    cur.execute(merge_sql)
            conn.commit()
            if tasks:
                with conn.cursor() as cur:
                    cur.execute("TRUNCATE TABLE tasks_stage")
            loaded += len(sessions) + len(tasks)
    finally:
        conn.close()
        path.unlink(missing_ok=True)
    return loaded
