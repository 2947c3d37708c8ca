"""An error nobody expected (a bug in a sink, in a conversion, in a command)
never makes the flusher re-read the same entries forever: the record, or
the entry, that meets it is dead-lettered with the error's text, and
everything else is written. Real spool and real SQLite sink; the fault is a
bug planted for one key."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import msgspec
import pytest

from core.records import KIND_DELETE_SESSION, KIND_SESSIONS, KIND_TASKS, DeleteSession
from core.settings import FlushSettings, SinkSettings, SpoolSettings
from flusher.loop import Flusher
from plugins.sqlite import SqliteSink
from plugins.tables import Table, TableRows
from testkit.service import session, sink_rows, task, wait_for
from wal import Spool
from wal.types import Append


class PlantedBug(Exception):
    pass


class BuggySink(SqliteSink):
    """The real SQLite sink, with a bug that fires for the keys named."""

    bad_rows: set[str] = set()
    bad_lookups: set[str] = set()
    bad_deletes: set[str] = set()

    def write(self, batch: Sequence[TableRows]) -> set[str]:
        if any(row[0] in self.bad_rows for part in batch for row in part.rows):
            raise PlantedBug("row bug")
        return super().write(batch)

    def existing(self, table: Table, keys: Iterable[str]) -> set[str]:
        ids = set(keys)
        if ids & self.bad_lookups:
            raise PlantedBug("lookup bug")
        return super().existing(table, ids)

    def delete_session(self, session_id: str, deleted_at_us: int | None = None) -> int | None:
        if session_id in self.bad_deletes:
            raise PlantedBug("delete bug")
        return super().delete_session(session_id, deleted_at_us)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Spool, BuggySink, str]]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    spool_settings = SpoolSettings(path=str(tmp_path / "spool.db"))
    sink = BuggySink(SqliteSink.connect(SinkSettings(url=url))._conn)
    sink.migrate()
    flusher_spool = Spool.open(spool_settings)
    flusher = Flusher(flusher_spool, sink, FlushSettings(max_delay=0.05, retry_initial=0.01, retry_max=0.05))
    stop = threading.Event()
    thread = threading.Thread(target=flusher.run, args=(stop, 5.0), daemon=True)
    thread.start()
    spool = Spool.open(spool_settings)
    yield spool, sink, url
    stop.set()
    thread.join(10)
    spool.close()
    flusher_spool.close()
    sink.close()


def _append(spool: Spool, kind: int, body: object, count: int = 1) -> None:
    (seq,) = spool.append_many([Append(kind, msgspec.json.encode(body), count)])
    assert isinstance(seq, int)


def _dead(spool: Spool) -> dict[str, str]:
    return {d.record_key or f"seq {d.seq}": d.error for d in spool.dead_letters()}


def test_a_row_whose_write_raises_is_isolated_and_dead_lettered(running) -> None:
    spool, sink, url = running
    sink.bad_rows = {"t-bug"}
    _append(spool, KIND_SESSIONS, {"sessions": [session("s-1")]})
    _append(spool, KIND_TASKS, {"tasks": [task(f"t-{i}", "s-1") for i in range(20)] + [task("t-bug", "s-1")]}, 21)
    _append(spool, KIND_TASKS, {"tasks": [task("t-after", "s-1")]})
    wait_for(lambda: len(sink_rows(url, "translation_tasks")) == 21, 10, "every other task to be written")
    assert _dead(spool) == {"t-bug": "PlantedBug: row bug"}
    assert spool.waiting().records == 0


def test_an_entry_that_fails_a_whole_cycle_is_found_and_set_aside(running) -> None:
    spool, sink, url = running
    sink.bad_lookups = {"cursed"}  # checking this session's existence fails: the whole cycle fails
    _append(spool, KIND_SESSIONS, {"sessions": [session("s-1")]})
    _append(spool, KIND_TASKS, {"tasks": [task("t-1", "s-1")]})
    _append(spool, KIND_TASKS, {"tasks": [task("t-cursed", "cursed")]})
    _append(spool, KIND_TASKS, {"tasks": [task("t-2", "s-1")]})
    wait_for(lambda: {r["task_id"] for r in sink_rows(url, "translation_tasks")} == {"t-1", "t-2"}, 10,
             "the tasks around the failing entry to be written")
    (error,) = _dead(spool).values()
    assert error == "PlantedBug: lookup bug"
    wait_for(lambda: spool.waiting().oldest_received_us == 0, 5, "the spool to drain")


def test_a_command_that_fails_is_dead_lettered_with_a_failed_result(running) -> None:
    spool, sink, url = running
    sink.bad_deletes = {"s-1"}
    _append(spool, KIND_SESSIONS, {"sessions": [session("s-1"), session("s-2")]}, 2)
    _append(spool, KIND_DELETE_SESSION, DeleteSession("s-1"))
    command_seq = spool.last_seq()
    _append(spool, KIND_DELETE_SESSION, DeleteSession("s-2"))
    wait_for(lambda: spool.command_result(command_seq + 1), 10, "the command after it to be applied")
    result = msgspec.json.decode(spool.command_result(command_seq) or b"null")
    assert result["status"] == "failed" and result["error"] == "PlantedBug: delete bug"
    assert [d.kind for d in spool.dead_letters()] == [KIND_DELETE_SESSION]
    assert [r["session_id"] for r in sink_rows(url, "translation_sessions")] == ["s-1"]
