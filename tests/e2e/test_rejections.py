"""Rows the database refuses for good are isolated, dead-lettered with the
database's error, and the rest of the batch is written."""

from __future__ import annotations

import sqlite3
from urllib.parse import urlsplit

import pymysql

from testkit.service import session, sink_rows, task, wait_for


def _forbid_large_row_index(sink_url: str) -> None:
    """An operator adds a rule the service does not know about."""
    url = urlsplit(sink_url)
    if url.scheme == "sqlite":
        conn = sqlite3.connect(sink_url[len("sqlite:///"):])
        conn.execute("CREATE TRIGGER no_big_rows BEFORE INSERT ON translation_tasks"
                      " WHEN NEW.row_index >= 1000000 BEGIN SELECT RAISE(ABORT, 'row_index too large'); END")
        conn.commit()
        conn.close()
        return
    conn = pymysql.connect(host=url.hostname, port=url.port, user="root", database=url.path.strip("/"))
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE translation_tasks ADD CONSTRAINT small_rows CHECK (row_index < 1000000)")
    conn.close()


def test_refused_rows_are_dead_lettered_and_the_rest_written(service) -> None:
    service.post_sessions([session("s-1")])
    assert service.flush().status_code == 200
    _forbid_large_row_index(service.sink_url)
    tasks = [task(f"t-{i:03d}", "s-1", row_index=i) for i in range(50)]
    tasks[17]["row_index"] = 5_000_000
    tasks[33]["row_index"] = 7_000_000
    assert service.post_tasks(tasks).status_code == 202
    assert service.flush().status_code == 200
    stored = {r["task_id"] for r in sink_rows(service.sink_url, "translation_tasks", "task_id")}
    assert stored == {t["task_id"] for t in tasks} - {"t-017", "t-033"}
    health = wait_for(lambda: (h := service.http.get("/health").json())["buffer"]["dead_letters"] == 2 and h,
                      10, "two dead letters")
    assert health["status"] == "healthy"
