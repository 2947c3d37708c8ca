"""flush.writers: a cycle's rows split by key hash over several sink
connections; every row written once, by the writer of its key; a deadlock
between transactions is retried at once and counted; a writer that fails
fails the cycle only after the others have finished."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pymysql
import pytest

from core import metrics
from core.settings import SinkSettings
from core.times import db_text
from flusher.writers import Writers, split
from plugins import RejectedRows, Sink, open_sink
from plugins.tables import AUDIT_TABLE, SESSION_TABLE, TASK_TABLE, TableRows
from testkit.service import sink_rows

T0 = 1_750_000_000_000_000


def _task(task_id: str, version: int, text: str) -> tuple:
    return (task_id, "s-1", "b", "Sheet", 3, "C", text, None, None, "pending", 0.5, None, 0,
            None, None, None, db_text(T0), db_text(version))


def _session(session_id: str) -> tuple:
    return (session_id, "f.xlsx", "/f.xlsx", "processing", "openai", None, None, 10, 2, 1, 0,
            db_text(T0), db_text(T0))


@pytest.fixture
def sinks(mysql_url: str) -> Iterator[list[Sink]]:
    opened = [open_sink(SinkSettings(url=mysql_url)) for _ in range(3)]
    opened[0].migrate()
    yield opened
    for sink in opened:
        sink.close()


def test_split_gives_each_key_to_one_writer_in_key_order_and_the_audit_chain_to_the_first() -> None:
    tasks = [_task(f"t-{i:04d}", T0, "x") for i in range(1000)]
    batch = [TableRows(TASK_TABLE, tasks, list(range(1000))), TableRows(AUDIT_TABLE, [("e-1",), ("e-2",)])]
    shares = split(batch, 3)
    written = [(row, at) for share in shares for part in share if part.table is TASK_TABLE
               for row, at in zip(part.rows, part.accepted_us)]
    assert sorted(written) == [(row, i) for i, row in enumerate(tasks)]  # each row once, with its own time
    for share in shares:
        for part in share:
            assert [r[0] for r in part.rows] == sorted(r[0] for r in part.rows)
    assert all(len([p for p in share if p.table is TASK_TABLE][0].rows) > 250 for share in shares)
    assert [p.table for p in shares[0]] == [TASK_TABLE, AUDIT_TABLE]
    assert split(batch, 3)[1] == shares[1]  # the same key goes to the same writer every time


def test_three_writers_store_every_row_with_its_highest_version(sinks: list[Sink], mysql_url: str) -> None:
    writers = Writers(sinks)
    writers.write([TableRows(SESSION_TABLE, [_session("s-1")]),
                   TableRows(TASK_TABLE, [_task(f"t-{i:04d}", T0 + 10, "new") for i in range(3000)])])
    writers.write([TableRows(TASK_TABLE, [_task(f"t-{i:04d}", T0 + 5, "stale") for i in range(3000)])])
    rows = sink_rows(mysql_url, "translation_tasks", "task_id, source_text")
    assert len(rows) == 3000 and {r["source_text"] for r in rows} == {"new"}


def test_a_refused_share_fails_the_write_after_the_others_committed(sinks: list[Sink], mysql_url: str) -> None:
    tasks = [_task(f"t-{i:04d}", T0, "ok") for i in range(300)]
    bad = list(tasks[7])
    bad[TASK_TABLE.columns.index("source_text")] = None  # NOT NULL column
    tasks[7] = tuple(bad)
    with pytest.raises(RejectedRows):
        Writers(sinks, share_rows=100).write([TableRows(TASK_TABLE, tasks)])
    stored = {r["task_id"] for r in sink_rows(mysql_url, "translation_tasks", "task_id")}
    # The bad row's writer wrote nothing; the other writers' shares are in (a replay of them is harmless).
    (bad_share,) = [share for share in split([TableRows(TASK_TABLE, tasks)], 3)
                    if any(row[0] == "t-0007" for part in share for row in part.rows)]
    assert stored == {row[0] for row in tasks} - {row[0] for part in bad_share for row in part.rows}


def test_a_batch_of_one_share_is_not_spread_thinner(sinks: list[Sink], mysql_url: str) -> None:
    """300 rows with 1000 per share: one transaction (three statements, as with one writer), so one bad row
    leaves nothing of the batch stored."""
    tasks = [_task(f"t-{i:04d}", T0, "ok") for i in range(300)]
    bad = list(tasks[7])
    bad[TASK_TABLE.columns.index("source_text")] = None
    tasks[7] = tuple(bad)
    with pytest.raises(RejectedRows):
        Writers(sinks, share_rows=1000).write([TableRows(TASK_TABLE, tasks)])
    assert sink_rows(mysql_url, "translation_tasks", "task_id") == []


def test_a_deadlock_is_retried_at_once_and_counted(sinks: list[Sink], mysql_url: str) -> None:
    """A real deadlock: another transaction (heavier, so InnoDB rolls the writer back) holds t-2 and then
    asks for t-1, which the writer holds while it waits for t-2."""
    writers = Writers(sinks[:1])
    writers.write([TableRows(TASK_TABLE, [_task(f"t-{i}", T0, "old") for i in range(1, 200)])])
    url = urlsplit(mysql_url)
    other = pymysql.connect(host=url.hostname, port=url.port, user="root", database=url.path.strip("/"),
                            autocommit=False)
    before = metrics.FLUSH_CONFLICTS._value.get()
    errors: list[BaseException] = []
    try:
        with other.cursor() as cur:
            cur.execute("UPDATE translation_tasks SET context = 'heavy' WHERE task_id >= 't-3'")  # weight
            cur.execute("UPDATE translation_tasks SET context = 'other' WHERE task_id = 't-2'")

            def write() -> None:
                try:
                    writers.write([TableRows(TASK_TABLE, [_task("t-1", T0 + 1, "mine"), _task("t-2", T0 + 1, "mine")])])
                except BaseException as exc:  # reported to the test below
                    errors.append(exc)
            thread = threading.Thread(target=write)
            thread.start()
            _wait_for_lock_wait(other, thread, errors)
            cur.execute("UPDATE translation_tasks SET context = 'other' WHERE task_id = 't-1'")  # the cycle closes
        other.commit()
        thread.join(30)
    finally:
        other.close()
    assert not thread.is_alive() and errors == []
    assert metrics.FLUSH_CONFLICTS._value.get() == before + 1
    rows = {r["task_id"]: r["source_text"] for r in sink_rows(mysql_url, "translation_tasks", "task_id, source_text")}
    assert rows["t-1"] == rows["t-2"] == "mine"


def _wait_for_lock_wait(conn: pymysql.connections.Connection, writer: threading.Thread,
                        errors: list[BaseException]) -> None:
    """Until the writer's upsert is running (it can only be waiting for t-2: it takes microseconds otherwise)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert writer.is_alive(), f"the writer did not wait for the lock: {errors}"
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.processlist WHERE db = DATABASE()"
                        " AND info LIKE 'INSERT INTO translation_tasks%'")
            if cur.fetchone()[0]:
                time.sleep(0.2)
                return
        time.sleep(0.02)
    raise AssertionError("the writer's upsert never ran")
