"""The spool on real files, checked against a list-and-dict model."""

from __future__ import annotations

import multiprocessing
import random
from pathlib import Path

import pytest

from core.records import KIND_SESSIONS, KIND_TASKS
from core.settings import SpoolSettings
from wal import Spool, SpoolCorrupt, SpoolFull
from testkit.service import appended
from wal.types import Append, DeadLetter, DrainCommit

MIB = 1024 * 1024


def _settings(path: Path, max_bytes: int = 64 * MIB) -> SpoolSettings:
    return SpoolSettings(path=str(path), sync="normal", max_bytes=max_bytes)


def test_model(tmp_path: Path, rng: random.Random) -> None:
    spool = Spool.open(_settings(tmp_path / "spool.db", max_bytes=MIB))
    model: list[tuple[int, int, int, bytes]] = []  # (seq, kind, count, payload)
    last_seq = 0
    for _ in range(300):
        op = rng.random()
        if op < 0.6:
            items = [Append(rng.choice([KIND_SESSIONS, KIND_TASKS]), rng.randbytes(rng.randint(1, 40_000)),
                            rng.randint(1, 1000)) for _ in range(rng.randint(1, 5))]
            live = sum(len(m[3]) for m in model)
            results = spool.append_many(items)
            for item, result in zip(items, results):
                if live + len(item.payload) > MIB:
                    assert isinstance(result, SpoolFull)
                    continue
                assert isinstance(result, int) and result > last_seq
                last_seq = result
                live += len(item.payload)
                model.append((result, item.kind, item.record_count, item.payload))
        elif op < 0.85:
            limit = rng.randint(1, 3000)
            got = spool.read(0, limit)
            expected: list[tuple] = []
            total = 0
            for m in model:
                if expected and total + m[2] > limit:
                    break
                expected.append(m)
                total += m[2]
                if total >= limit:
                    break
            assert [(e.seq, e.kind, e.record_count, e.payload) for e in got] == expected
            received = [e.received_at_us for e in got]
            assert received == sorted(received) and len(set(received)) == len(received)
        elif model:
            through = model[rng.randrange(len(model))][0]
            spool.commit_drain(DrainCommit(through_seq=through))
            model = [m for m in model if m[0] > through]
        stats = spool.stats()
        assert stats.pending_bytes == sum(len(m[3]) for m in model)
        assert stats.pending_sessions == sum(m[2] for m in model if m[1] == KIND_SESSIONS)
        assert stats.pending_tasks == sum(m[2] for m in model if m[1] == KIND_TASKS)
        assert stats.last_seq == last_seq
    spool.close()


def test_entries_survive_reopen_and_seq_is_never_reused(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "spool.db")
    spool = Spool.open(settings)
    seqs = appended(spool.append_many([Append(KIND_TASKS, b"a", 1), Append(KIND_TASKS, b"b", 1)]))
    spool.commit_drain(DrainCommit(through_seq=seqs[-1]))
    spool.close()
    spool = Spool.open(settings)
    (seq,) = appended(spool.append_many([Append(KIND_TASKS, b"c", 1)]))
    assert seq > seqs[-1]
    assert [e.payload for e in spool.read(0, 10)] == [b"c"]
    assert spool.flushed_seq() == seqs[-1]
    spool.close()


def test_full_spool_refuses_and_keeps_what_it_had(tmp_path: Path) -> None:
    spool = Spool.open(_settings(tmp_path / "spool.db", max_bytes=MIB))
    first = spool.append_many([Append(KIND_TASKS, b"x" * (MIB - 10), 1)])
    assert isinstance(first[0], int)
    (refused,) = spool.append_many([Append(KIND_TASKS, b"y" * 100, 1)])
    assert isinstance(refused, SpoolFull) and refused.retry_after > 0
    assert [e.seq for e in spool.read(0, 10)] == first
    spool.commit_drain(DrainCommit(through_seq=first[0]))
    (accepted,) = spool.append_many([Append(KIND_TASKS, b"y" * 100, 1)])
    assert isinstance(accepted, int)
    spool.close()


def test_dead_letters_are_kept_listed_and_purged(tmp_path: Path) -> None:
    spool = Spool.open(_settings(tmp_path / "spool.db"))
    (seq,) = appended(spool.append_many([Append(KIND_TASKS, b"payload", 1)]))
    spool.commit_drain(DrainCommit(through_seq=seq, dead=[DeadLetter(seq, KIND_TASKS, "t-1", 5, "bad value", b"{}")]))
    (letter,) = spool.dead_letters()
    assert (letter.record_key, letter.error, letter.seq) == ("t-1", "bad value", seq)
    assert spool.stats().dead_letters == 1
    assert spool.purge_dead_letters() == 1
    assert spool.dead_letters() == []
    spool.close()


def _append_from_process(path: str, count: int) -> list[int]:
    spool = Spool.open(_settings(Path(path)))
    seqs = []
    for _ in range(count):
        seqs.extend(appended(spool.append_many([Append(KIND_TASKS, b"p", 1)])))
    spool.close()
    return seqs


def test_concurrent_processes_get_unique_ordered_seqs(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    Spool.open(_settings(path)).close()
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.starmap(_append_from_process, [(str(path), 200)] * 3)
    all_seqs = [s for r in results for s in r]
    assert len(set(all_seqs)) == 600
    for seqs in results:
        assert seqs == sorted(seqs)
    spool = Spool.open(_settings(path))
    entries = spool.read(0, 10_000)
    assert [e.seq for e in entries] == sorted(all_seqs)
    received = [e.received_at_us for e in entries]
    assert all(a < b for a, b in zip(received, received[1:])), "versions must follow commit order"
    spool.close()


def test_a_file_that_is_not_a_spool_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not a sqlite database at all" * 100)
    with pytest.raises(SpoolCorrupt, match=str(path)):
        Spool.open(_settings(path))


def test_a_format_1_spool_is_brought_up_to_date_with_its_entries(tmp_path: Path) -> None:
    import sqlite3

    from wal import schema

    path = tmp_path / "spool.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in schema._statements(schema.SCHEMA_V1):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO entries (kind, received_at_us, record_count, payload) VALUES (2, 5, 1, x'7b7d')")
    conn.execute("UPDATE state SET live_tasks = 1, live_bytes = 2, sessions_written = 7")
    conn.execute("INSERT INTO held (task_id, session_id, received_at_us, held_since_us, payload)"
                 " VALUES ('t-1', 's-1', 3, 4, x'7b7d')")
    conn.close()
    spool = Spool.open(_settings(path))
    try:
        assert spool._conn.execute("PRAGMA user_version").fetchone()[0] == schema.FORMAT_VERSION == 4
        assert spool._conn.execute("SELECT live_events, events_written FROM state").fetchone() == (0, 0)
        assert [e.payload for e in spool.read(0, 10)] == [b"{}"]
        (held,) = spool.held()
        assert (held.task_id, held.held_at_clock_us) == ("t-1", 0)
        assert spool.totals().sessions_written == 7 and spool.healthy_clock_us() == 0
    finally:
        spool.close()
    Spool.open(_settings(path)).close()  # opening again changes nothing
