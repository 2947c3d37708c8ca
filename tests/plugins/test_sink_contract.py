"""One contract, every real backend: adding a sink means adding a parameter
to the `sink` fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.records import SESSION_COLUMNS, TASK_COLUMNS
from core.settings import SinkSettings
from core.times import db_text
from plugins import RejectedRows, Sink, open_sink
from plugins.mysql_literal import statements
from tests.harness import sink_rows

T0 = 1_750_000_000_000_000
NASTY = "quote ' double \" backslash \\ nul \0 newline \n cr \r ctrl-z \x1a tab \t 中文 emoji 😀 \\' end"


@pytest.fixture
def sink(sink_url: str) -> Iterator[Sink]:
    sink = open_sink(SinkSettings(url=sink_url))
    sink.migrate()
    yield sink
    sink.close()


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
    sink.write([_session("s-1", T0)], [_task("t-1", T0, NASTY), _task("t-2", T0, "x" * 65535)])
    rows = _tasks(sink_url)
    assert rows["t-1"]["source_text"] == NASTY
    assert len(rows["t-2"]["source_text"]) == 65535
    (session,) = sink_rows(sink_url, "translation_sessions")
    assert [session[c] for c in SESSION_COLUMNS[:4]] == ["s-1", "f.xlsx", "/f.xlsx", "processing"]


def test_highest_version_wins_across_batches(sink: Sink, sink_url: str) -> None:
    sink.write([], [_task("t-1", T0 + 10, "new", created=T0 + 10)])
    sink.write([], [_task("t-1", T0 + 5, "stale", created=T0 + 5)])  # older version, arrives later
    sink.write([], [_task("t-1", T0 + 10, "new", created=T0 + 10)])  # replay: harmless
    row = _tasks(sink_url)["t-1"]
    assert row["source_text"] == "new"
    assert str(row["updated_at"]).startswith(db_text(T0 + 10)[:26])
    assert str(row["created_at"]).startswith(db_text(T0 + 5)[:19])  # the earliest acceptance
    sink.write([], [_task("t-1", T0 + 11, "newer")])
    assert _tasks(sink_url)["t-1"]["source_text"] == "newer"


def test_existing_sessions(sink: Sink) -> None:
    sink.write([_session("s-1", T0), _session("s-2", T0)], [])
    assert sink.existing_sessions(["s-1", "s-3", "s-2"]) == {"s-1", "s-2"}
    assert sink.existing_sessions([f"n-{i}" for i in range(1200)] + ["s-1"]) == {"s-1"}
    assert sink.existing_sessions([]) == set()


def test_a_refused_batch_leaves_nothing(sink: Sink, sink_url: str) -> None:
    bad = list(_task("t-bad", T0))
    bad[TASK_COLUMNS.index("source_text")] = None  # NOT NULL column
    with pytest.raises(RejectedRows):
        sink.write([_session("s-9", T0)], [_task("t-ok", T0), tuple(bad)])
    assert sink_rows(sink_url, "translation_tasks") == []
    assert sink_rows(sink_url, "translation_sessions") == []
    sink.write([], [_task("t-ok", T0)])  # the sink is usable afterwards
    assert set(_tasks(sink_url)) == {"t-ok"}


def test_ping(sink: Sink) -> None:
    assert sink.ping() is True


def test_statements_respect_the_size_limit() -> None:
    rows = [(f"k{i}", "v" * 100, None, 1.5, 7) for i in range(50)]
    parts = list(statements("INSERT INTO t VALUES ", rows, " ON DUPLICATE KEY UPDATE a=a", 1000))
    assert len(parts) > 1 and all(len(p) <= 1000 for p in parts)
    assert sum(p.count(b"('k") for p in parts) == 50
    assert b"('k0','" + b"v" * 100 + b"',NULL,1.5,7)" in parts[0]
