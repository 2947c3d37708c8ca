"""Tests of the system routes and the operator commands (config, OpenAPI,
dead letters, status). Helpers shared by these modules live here."""

from __future__ import annotations

import sqlite3
from typing import Any
from urllib.parse import urlsplit

import pymysql

from testkit.service import Service, session, sink_rows, task, wait_for

DEAD_LETTERS = "/api/v1/system/dead-letters"
BAD_ROW_INDEX = 5_000_000


def _sqlite_run(sink_url: str, sql: str) -> None:
    conn = sqlite3.connect(sink_url[len("sqlite:///"):])
    try:
        conn.execute(sql)
        conn.commit()
    finally:
        conn.close()


def _mysql_run(sink_url: str, sql: str) -> None:
    url = urlsplit(sink_url)
    conn = pymysql.connect(host=url.hostname, port=url.port, user="root", database=url.path.strip("/"))
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def forbid_large_row_index(sink_url: str) -> None:
    """An operator adds a rule the service does not know about (as tests/e2e/test_rejections.py)."""
    if urlsplit(sink_url).scheme == "sqlite":
        _sqlite_run(sink_url, "CREATE TRIGGER no_big_rows BEFORE INSERT ON translation_tasks"
                              " WHEN NEW.row_index >= 1000000 BEGIN SELECT RAISE(ABORT, 'row_index too large'); END")
    else:
        _mysql_run(sink_url, "ALTER TABLE translation_tasks ADD CONSTRAINT small_rows CHECK (row_index < 1000000)")


def allow_large_row_index(sink_url: str) -> None:
    """The operator lifts the rule: the dead letters can now be retried."""
    if urlsplit(sink_url).scheme == "sqlite":
        _sqlite_run(sink_url, "DROP TRIGGER no_big_rows")
    else:
        _mysql_run(sink_url, "ALTER TABLE translation_tasks DROP CONSTRAINT small_rows")


def make_dead_letters(service: Service, bad: tuple[int, ...] = (17, 33)) -> None:
    """Tasks t-000..t-049 of session s-1; those at the indexes in bad are refused by the database."""
    assert service.post_sessions([session("s-1")]).status_code == 202
    assert service.flush().status_code == 200
    forbid_large_row_index(service.sink_url)
    tasks = [task(f"t-{i:03d}", "s-1", row_index=i) for i in range(50)]
    for i in bad:
        tasks[i]["row_index"] = BAD_ROW_INDEX + i
    assert service.post_tasks(tasks).status_code == 202
    assert service.flush().status_code == 200
    wait_for(lambda: service.http.get("/health").json()["buffer"]["dead_letters"] == len(bad), 10,
             f"{len(bad)} dead letters")


def stored_tasks(service: Service) -> dict[str, dict[str, Any]]:
    return {r["task_id"]: r for r in sink_rows(service.sink_url, "translation_tasks", "task_id, row_index")}
