"""The MySQL/MariaDB sink in a backup: a logical dump made by the service
itself, in one `START TRANSACTION WITH CONSISTENT SNAPSHOT`, and its restore.

Why not mariadb-dump or mariadb-backup (docs/BENCHMARKS.md, backups):
mariadb-backup is not installed here and copies the whole server's files, not
one database; `mariadb-dump --single-transaction` is consistent for InnoDB
only, and needs the client programs on the service's host. The dump here reads
every InnoDB table of the sink's database in one snapshot, counts its rows
exactly (the manifest's records), and writes each table as msgpack chunks of
rows (times and decimals as the server's own text, so they come back exact).
The Mroonga search table is not transactional, so it is not copied: the
restore makes it again from audit_events, as the sink would have.

A restore loads every table into `<name>__restore` in the target database,
then swaps all of them in one `RENAME TABLE` (atomic in MariaDB 10.6+): a
crash leaves the old tables or the new ones. The old ones are renamed
`<name>__before_restore` and dropped when they held nothing. (Mroonga
tables cannot be renamed into another database, so staging stays in the
target database.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pymysql
import pymysql.cursors

from backup.parts import RECORD_TABLES, Part, PartWriter, TableDump
from core.settings import SinkSettings
from plugins.audit.mysql import INSERT_SEARCH, indexed_text
from plugins.mysql import connect_params
from plugins.mysql_literal import statements

STAGED = "__restore"
BEFORE = "__before_restore"
FETCH_ROWS = 2000
STATEMENT_BYTES = 1024 * 1024
COMMIT_EVERY_ROWS = 20_000  # rows per restore transaction: bounded undo
# Types read as the server's own text: exact on the way back (a Python datetime or Decimal is not needed).
AS_TEXT = {"datetime", "timestamp", "date", "time", "decimal", "year", "json"}
REBUILT = {"audit_search"}  # made again from audit_events (see the module's docstring)


def _connect(settings: SinkSettings, database: str | None = "", streaming: bool = False) -> pymysql.Connection:
    """A connection to sink.url's database (""), another one, or none (None: it may not exist yet)."""
    target, params = connect_params(settings)
    if streaming:
        params["cursorclass"] = pymysql.cursors.SSCursor
    return target.connect(database, **params)


def database_name(settings: SinkSettings) -> str:
    return connect_params(settings)[0].database


def dump(settings: SinkSettings, part_writer: Callable[[str], PartWriter]) -> tuple[list[TableDump], str]:
    """Every table of the sink's database, read in one snapshot; (tables, the database's collation)."""
    database = database_name(settings)
    conn = _connect(settings, streaming=True)
    try:
        cur = conn.cursor()
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        cur.execute("SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                    (database,))
        collation = cur.fetchall()[0][0]
        cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
                    " AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME", (database,))
        names = [r[0] for r in cur.fetchall() if not r[0].endswith((STAGED, BEFORE))]
        tables = []
        for name in names:
            cur.execute(f"SHOW CREATE TABLE `{name}`")
            create = cur.fetchall()[0][1]
            cur.execute("SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s"
                        " AND TABLE_NAME = %s AND IS_GENERATED = 'NEVER' ORDER BY ORDINAL_POSITION", (database, name))
            columns = [(r[0], r[1].lower()) for r in cur.fetchall()]
            table = TableDump(name, create, [c for c, _ in columns], rebuilt=name in REBUILT)
            if not table.rebuilt:
                table.part = _dump_rows(cur, name, columns, part_writer(f"tables/{name}.zst"))
            tables.append(table)
        conn.rollback()
        return tables, collation
    finally:
        conn.close()


def _dump_rows(cur: pymysql.cursors.SSCursor, name: str, columns: list[tuple[str, str]], writer: PartWriter) -> Part:
    selected = ", ".join(f"CAST(`{c}` AS CHAR)" if kind in AS_TEXT else f"`{c}`" for c, kind in columns)
    try:
        cur.execute(f"SELECT {selected} FROM `{name}`")
        while rows := cur.fetchmany(FETCH_ROWS):
            writer.write_rows(rows)
        return writer.commit(f"table:{name}")
    except BaseException:
        writer.abort()
        raise


def existing_rows(settings: SinkSettings, tables: list[str]) -> dict[str, int]:
    """Rows per table of the target database (a missing database or table counts 0)."""
    database = database_name(settings)
    conn = _connect(settings, database=None)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (database,))
            present = {r[0] for r in cur.fetchall()}
            counts = {}
            for table in tables:
                if table in present:
                    cur.execute(f"SELECT count(*) FROM `{database}`.`{table}`")
                    counts[table] = cur.fetchone()[0]
                else:
                    counts[table] = 0
        return counts
    finally:
        conn.close()


def stage(settings: SinkSettings, tables: list[TableDump], collation: str,
          rows_of: Callable[[Part], Iterator[list[list]]]) -> None:
    """Load every table into <name>__restore in the target database (made
    when missing); rows_of raises BackupDamaged for a damaged part, after
    which the staged tables are dropped."""
    database = database_name(settings)
    conn = _connect(settings, database=None)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4 COLLATE {collation}")
            cur.execute(f"USE `{database}`")
            cur.execute("SET SESSION foreign_key_checks = 0, unique_checks = 0")
            try:
                for table in tables:
                    cur.execute(f"DROP TABLE IF EXISTS `{table.name}{STAGED}`")
                    cur.execute(_staged_create(table))
                    if table.part is not None:
                        _load(conn, cur, table, rows_of(table.part))
                if any(t.name == "audit_search" for t in tables):
                    _rebuild_search(settings, database, cur, conn)
                conn.commit()
            except BaseException:
                conn.rollback()
                drop_staged(cur, tables)
                raise
    finally:
        conn.close()


def _staged_create(table: TableDump) -> str:
    head = f"CREATE TABLE `{table.name}`"
    if not table.create.startswith(head):
        raise ValueError(f"unexpected DDL for {table.name}: {table.create[:80]!r}")
    return f"CREATE TABLE `{table.name}{STAGED}`" + table.create[len(head):]


def _load(conn: pymysql.Connection, cur: pymysql.cursors.Cursor, table: TableDump, chunks: Iterator[list[list]]) -> None:
    prefix = f"INSERT INTO `{table.name}{STAGED}` ({', '.join(f'`{c}`' for c in table.columns)}) VALUES "
    pending = 0
    for rows in chunks:
        for statement in statements(prefix, [tuple(r) for r in rows], "", STATEMENT_BYTES):
            cur.execute(statement)
        pending += len(rows)
        if pending >= COMMIT_EVERY_ROWS:
            conn.commit()
            pending = 0
    conn.commit()


def _rebuild_search(settings: SinkSettings, database: str, cur: pymysql.cursors.Cursor,
                    conn: pymysql.Connection) -> None:
    """The search rows of the restored events, as plugins/audit/mysql.py writes them."""
    reader = _connect(settings, database=database, streaming=True)
    insert = INSERT_SEARCH.replace("audit_search", f"audit_search{STAGED}")
    try:
        events = reader.cursor()
        events.execute(f"SELECT pos, message, details FROM `audit_events{STAGED}`")
        while rows := events.fetchmany(FETCH_ROWS):
            texts = [(pos, indexed_text(message, details)) for pos, message, details in rows]
            for statement in statements(insert, texts, "", STATEMENT_BYTES):
                cur.execute(statement)
            conn.commit()
    finally:
        reader.close()


def drop_staged(cur: pymysql.cursors.Cursor, tables: list[TableDump]) -> None:
    for table in tables:
        cur.execute(f"DROP TABLE IF EXISTS `{table.name}{STAGED}`")


def swap(settings: SinkSettings, tables: list[TableDump]) -> list[str]:
    """Put the staged tables in place in one RENAME TABLE; the replaced
    tables are kept as <name>__before_restore (returned) when they held records, else dropped."""
    database = database_name(settings)
    conn = _connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (database,))
            present = {r[0] for r in cur.fetchall()}
            staged = [t.name for t in tables if t.name + STAGED in present]
            if len(staged) != len(tables):  # a rerun after the swap: nothing staged is left to put in place
                return []
            renames = []
            for name in staged:
                if name in present:
                    cur.execute(f"DROP TABLE IF EXISTS `{name}{BEFORE}`")
                    renames.append(f"`{name}` TO `{name}{BEFORE}`")
                renames.append(f"`{name}{STAGED}` TO `{name}`")
            cur.execute("RENAME TABLE " + ", ".join(renames))
            replaced = [name for name in staged if name in present]
            held_records = False
            for name in replaced:
                if name in RECORD_TABLES:
                    cur.execute(f"SELECT EXISTS (SELECT 1 FROM `{name}{BEFORE}`)")
                    held_records = held_records or bool(cur.fetchone()[0])
            kept = [f"{name}{BEFORE}" for name in replaced if held_records and name not in REBUILT]
            for name in replaced:
                if f"{name}{BEFORE}" not in kept:
                    cur.execute(f"DROP TABLE `{name}{BEFORE}`")
            return kept
    finally:
        conn.close()
