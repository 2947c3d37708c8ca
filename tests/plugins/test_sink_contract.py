"""One contract, every real backend: adding a sink means adding a parameter
to the `sink` fixture."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from urllib.parse import urlsplit

import pymysql
import pytest

from core.settings import SinkSettings
from core.times import db_text
from plugins import RejectedRows, Sink, StatusChange, open_sink
from plugins.mysql_literal import statements
from plugins.tables import SESSION_TABLE, TASK_TABLE, TableRows
from testkit.service import sink_rows

T0 = 1_750_000_000_000_000
NASTY = "quote ' double \" backslash \\ nul \0 newline \n cr \r ctrl-z \x1a tab \t 中文 emoji 😀 \\' end"


@pytest.fixture
def sink(sink_url: str) -> Iterator[Sink]:
    sink = open_sink(SinkSettings(url=sink_url))
    sink.migrate()
    yield sink
    sink.close()


def _write(sink: Sink, sessions: list[tuple], tasks: list[tuple]) -> None:
    sink.write([TableRows(SESSION_TABLE, sessions), TableRows(TASK_TABLE, tasks)])


def _session(session_id: str, version: int, status: str = "processing", created: int = T0) -> tuple:
    return (session_id, "f.xlsx", "/f.xlsx", status, "openai", '{"game_name": "G"}', None, 10, 2, 1, 0,
            db_text(created), db_text(version))


def _task(task_id: str, version: int, text: str = "你好", created: int = T0, session_id: str = "s-1") -> tuple:
    return (task_id, session_id, "b", "Sheet", 3, "C", text, None, None, "pending", 0.5, None, 0,
            None, None, None, db_text(created), db_text(version))


def _tasks(sink_url: str) -> dict[str, dict]:
    return {r["task_id"]: r for r in sink_rows(sink_url, "translation_tasks")}


def test_migrate_is_repeatable(sink: Sink) -> None:
    sink.migrate()
    sink.migrate()


def test_rows_round_trip_exactly(sink: Sink, sink_url: str) -> None:
    _write(sink, [_session("s-1", T0)], [_task("t-1", T0, NASTY), _task("t-2", T0, "x" * 65535)])
    rows = _tasks(sink_url)
    assert rows["t-1"]["source_text"] == NASTY
    assert len(rows["t-2"]["source_text"]) == 65535
    (session,) = sink_rows(sink_url, "translation_sessions")
    assert [session[c] for c in SESSION_TABLE.columns[:4]] == ["s-1", "f.xlsx", "/f.xlsx", "processing"]


def test_highest_version_wins_across_batches(sink: Sink, sink_url: str) -> None:
    _write(sink, [], [_task("t-1", T0 + 10, "new", created=T0 + 10)])
    _write(sink, [], [_task("t-1", T0 + 5, "stale", created=T0 + 5)])  # older version, arrives later
    _write(sink, [], [_task("t-1", T0 + 10, "new", created=T0 + 10)])  # replay: harmless
    row = _tasks(sink_url)["t-1"]
    assert row["source_text"] == "new"
    assert str(row["updated_at"]).startswith(db_text(T0 + 10)[:26])
    assert str(row["created_at"]).startswith(db_text(T0 + 5)[:19])  # the earliest acceptance
    _write(sink, [], [_task("t-1", T0 + 11, "newer")])
    assert _tasks(sink_url)["t-1"]["source_text"] == "newer"


def test_a_tie_in_updated_at_goes_to_the_higher_node_whichever_is_flushed_last(sink: Sink, sink_url: str) -> None:
    """Two nodes (sink.node_id 1 and 2) share the sink and carry writes of the same keys with the same updated_at."""
    low, high = (open_sink(SinkSettings(url=sink_url, node_id=n)) for n in (1, 2))
    try:
        _write(high, [], [_task("t-1", T0, "from 2")])
        _write(low, [], [_task("t-1", T0, "from 1")])  # flushed last, same version, lower node: changes nothing
        _write(low, [], [_task("t-2", T0, "from 1")])
        _write(high, [], [_task("t-2", T0, "from 2")])
        _write(low, [], [_task("t-3", T0, "first")])
        _write(low, [], [_task("t-3", T0, "second")])  # one node, one version: its later write wins, as before
        rows = _tasks(sink_url)
        assert {k: rows[k]["source_text"] for k in rows} == {"t-1": "from 2", "t-2": "from 2", "t-3": "second"}
        assert {k: rows[k]["version_node"] for k in rows} == {"t-1": 2, "t-2": 2, "t-3": 1}
        _write(low, [], [_task("t-1", T0 + 1, "later")])  # a later updated_at wins through any node
        assert _tasks(sink_url)["t-1"]["source_text"] == "later"
        # A status change is a version too: at the row's updated_at, only a node at least as high applies it.
        _write(high, [_session("s-1", T0)], [])
        assert low.set_session_status("s-1", "failed", db_text(T0)) == StatusChange(False, "processing")
        assert high.set_session_status("s-1", "completed", db_text(T0)) == StatusChange(True, "completed")
        assert low.set_session_status("s-1", "failed", db_text(T0 + 1)) == StatusChange(True, "failed")
        assert sink_rows(sink_url, "translation_sessions")[0]["version_node"] == 1
    finally:
        low.close()
        high.close()


def test_migrate_adds_the_version_node_to_tables_made_before_it(sink: Sink, sink_url: str) -> None:
    _write(sink, [_session("s-1", T0)], [_task("t-1", T0, "kept")])
    _drop_version_node(sink_url)
    assert "version_node" not in _tasks(sink_url)["t-1"]
    sink.migrate()
    assert _tasks(sink_url)["t-1"]["version_node"] == 0  # the rows stay, at node 0
    _write(sink, [], [_task("t-1", T0, "rewritten")])
    assert _tasks(sink_url)["t-1"]["source_text"] == "rewritten"


def _drop_version_node(sink_url: str) -> None:
    """The schema as a sink before version_node made it."""
    if sink_url.startswith("sqlite"):
        conn = sqlite3.connect(sink_url[len("sqlite:///"):])
        for table in ("translation_sessions", "translation_tasks"):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN version_node")
        conn.commit()
        conn.close()
        return
    url = urlsplit(sink_url)
    conn = pymysql.connect(host=url.hostname, port=url.port, user="root", database=url.path.strip("/"))
    with conn.cursor() as cur:
        for table in ("translation_sessions", "translation_tasks"):
            cur.execute(f"ALTER TABLE {table} DROP COLUMN version_node")
    conn.close()


def test_existing_keys(sink: Sink) -> None:
    _write(sink, [_session("s-1", T0), _session("s-2", T0)], [])
    assert sink.existing(SESSION_TABLE, ["s-1", "s-3", "s-2"]) == {"s-1", "s-2"}
    assert sink.existing(SESSION_TABLE, [f"n-{i}" for i in range(1200)] + ["s-1"]) == {"s-1"}
    assert sink.existing(SESSION_TABLE, []) == set()


def test_a_refused_batch_leaves_nothing(sink: Sink, sink_url: str) -> None:
    bad = list(_task("t-bad", T0))
    bad[TASK_TABLE.columns.index("source_text")] = None  # NOT NULL column
    with pytest.raises(RejectedRows):
        _write(sink, [_session("s-9", T0)], [_task("t-ok", T0), tuple(bad)])
    assert sink_rows(sink_url, "translation_tasks") == []
    assert sink_rows(sink_url, "translation_sessions") == []
    _write(sink, [], [_task("t-ok", T0)])  # the sink is usable afterwards
    assert set(_tasks(sink_url)) == {"t-ok"}


def test_ping(sink: Sink) -> None:
    assert sink.ping() is True


def test_statements_respect_the_size_limit() -> None:
    rows = [(f"k{i}", "v" * 100, None, 1.5, 7) for i in range(50)]
    parts = list(statements("INSERT INTO t VALUES ", rows, " ON DUPLICATE KEY UPDATE a=a", 1000))
    assert len(parts) > 1 and all(len(p) <= 1000 for p in parts)
    assert sum(p.count(b"('k") for p in parts) == 50
    assert b"('k0','" + b"v" * 100 + b"',NULL,1.5,7)" in parts[0]


def test_delete_session_removes_its_tasks_only(sink: Sink, sink_url: str) -> None:
    _write(sink, [_session("s-1", T0), _session("s-2", T0)],
               [_task(f"a-{i}", T0, session_id="s-1") for i in range(7)] + [_task("b-1", T0, session_id="s-2")])
    assert sink.delete_session("s-1") == 7
    assert sink.delete_session("s-1") is None
    assert set(_tasks(sink_url)) == {"b-1"}
    assert [r["session_id"] for r in sink_rows(sink_url, "translation_sessions")] == ["s-2"]


def _tombstones(sink_url: str) -> dict[str, int]:
    return {r["session_id"]: int(r["deleted_at_us"]) for r in sink_rows(sink_url, "translation_session_deletes")}


def test_a_delete_keeps_when_it_was_accepted_and_a_missing_session_leaves_no_mark(sink: Sink, sink_url: str) -> None:
    _write(sink, [_session("s-1", T0), _session("s-2", T0)], [])
    assert sink.delete_session("s-1", 1_000) == 0
    assert sink.delete_session("s-3", 5_000) is None  # not stored: nothing deleted, no tombstone
    assert _tombstones(sink_url) == {"s-1": 1_000}
    _write(sink, [_session("s-1", T0)], [])  # a new session of the same id, then deleted again later
    assert sink.delete_session("s-1", 3_000) == 0
    assert _tombstones(sink_url) == {"s-1": 3_000}


def test_writes_accepted_before_their_sessions_delete_are_left_out(sink: Sink, sink_url: str) -> None:
    _write(sink, [_session("s-1", T0), _session("s-2", T0)], [_task("a-1", T0), _task("b-1", T0, session_id="s-2")])
    assert sink.delete_session("s-1", 1_000) == 1
    # Writes another node accepted before the delete (at 999) and after it (at 1001), arriving after it.
    found = sink.write([TableRows(SESSION_TABLE, [_session("s-1", T0 + 5), _session("s-2", T0 + 5)], [999, 999]),
                        TableRows(TASK_TABLE, [_task("a-1", T0 + 5), _task("a-2", T0 + 5),
                                               _task("b-2", T0 + 5, session_id="s-2")], [999, 1_001, 999])])
    assert found == {"s-1"}
    assert [r["session_id"] for r in sink_rows(sink_url, "translation_sessions")] == ["s-2"]
    assert set(_tasks(sink_url)) == {"a-2", "b-1", "b-2"}  # a-2 came after the delete: kept (an orphan now)
    assert sink.write([TableRows(SESSION_TABLE, [_session("s-1", T0 + 6)])]) == set()  # no times: no check
    assert {r["session_id"] for r in sink_rows(sink_url, "translation_sessions")} == {"s-1", "s-2"}


def test_set_session_status_respects_versions(sink: Sink, sink_url: str) -> None:
    _write(sink, [_session("s-1", T0 + 100)], [])
    assert sink.set_session_status("s-1", "processing", db_text(T0 + 100)) == StatusChange(True, "processing")
    # An older change is not applied, and says so with the status that stays.
    assert sink.set_session_status("s-1", "failed", db_text(T0 + 50)) == StatusChange(False, "processing")
    assert sink_rows(sink_url, "translation_sessions")[0]["status"] == "processing"
    assert sink.set_session_status("s-1", "completed", db_text(T0 + 200)) == StatusChange(True, "completed")
    row = sink_rows(sink_url, "translation_sessions")[0]
    assert row["status"] == "completed" and str(row["updated_at"]).startswith(db_text(T0 + 200)[:19])
    assert sink.set_session_status("nope", "completed", db_text(T0)) is None


def test_cleanup_by_status_and_age(sink: Sink, sink_url: str) -> None:
    old, new = T0, T0 + 10 * 86_400_000_000
    _write(sink, [_session("c-old", old, "completed"), _session("c-new", new, "completed"),
                _session("f-old", old, "failed"), _session("p-old", old, "processing")],
               [_task("t1", old, session_id="c-old"), _task("t2", old, session_id="f-old"),
                _task("t3", old, session_id="p-old")])
    cutoff = db_text(T0 + 86_400_000_000)
    assert sink.cleanup(cutoff, cutoff, dry_run=True) == (2, 2)
    assert len(sink_rows(sink_url, "translation_sessions")) == 4
    assert sink.cleanup(cutoff, cutoff, dry_run=False) == (2, 2)
    assert {r["session_id"] for r in sink_rows(sink_url, "translation_sessions")} == {"c-new", "p-old"}
    assert set(_tasks(sink_url)) == {"t3"}
