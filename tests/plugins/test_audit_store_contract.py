"""One contract for every audit backend (SQLite FTS5, MariaDB Mroonga):
events written through the sink as the flusher writes them, read back
through the backend's AuditLog. Search answers are checked against the rule
of plugins/audit/text.py: every event that must match is found, nothing
that may not match is."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from typing import Any
from datetime import UTC, datetime
from urllib.parse import urlsplit
from pathlib import Path

import msgspec
import pymysql
import pytest

from persistence_api.audit import AuditEvent, complete
from core.settings import SinkSettings
from core.times import from_us, now_us, to_us
from plugins import Sink, open_sink
from plugins.audit import open_audit_log
from plugins.audit.store import AuditLog, EventFilter
from plugins.audit.text import may_match, must_match, search_text
from plugins.tables import AUDIT_TABLE, TableRows
from testkit.service import sink_rows

ENGLISH = ["session", "finished", "translation", "reviewer", "approved", "Export", "upload", "failed", "ok", "a",
           "retry", "QUOTA", "model", "glossary", "id"]
CHINESE = ["机器", "翻译", "完成", "审核", "通过", "文件", "上传", "失败", "重试", "术语表", "游戏", "对话", "的"]
HOSTILE = ['"', '""', "'", "\\", "*", "%", "_", "(", ")", "AND", "OR", "NOT", "NEAR", "NEAR(a b)", "a*", "-x", "+y",
           "~z", "<>", "@2", "{x}", "[y]", "^", ":", "col:val", "100%", "a_b", "\\%", "*D+", "'; DROP TABLE x; --"]


@pytest.fixture(params=["sqlite", "mysql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Sink, AuditLog, str]]:
    url = f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else request.getfixturevalue("mysql_url")
    settings = SinkSettings(url=url)
    sink = open_sink(settings)
    sink.migrate()
    log = open_audit_log(settings)
    yield sink, log, url
    log.close()
    sink.close()


def write(sink: Sink, events: list[dict]) -> list[AuditEvent]:
    records = [msgspec.convert(e, AuditEvent) for e in events]
    complete(records, now_us())
    sink.write([TableRows(AUDIT_TABLE, [AUDIT_TABLE.to_row(r, 0, now_us()) for r in records])])
    return records


def phrase(rng: random.Random) -> str:
    parts = [rng.choice(ENGLISH + CHINESE + HOSTILE) for _ in range(rng.randint(1, 8))]
    glue = [rng.choice([" ", " ", "", ", ", "。"]) for _ in parts]
    return "".join(p + g for p, g in zip(parts, glue)).strip()


def search_all(log: AuditLog, words: tuple[str, ...], limit: int = 50) -> list[str]:
    ids: list[str] = []
    before = None
    while True:
        items, before = log.page(EventFilter(words=words), before, limit)
        ids.extend(e.event_id for e in items)
        if before is None:
            return ids


def test_search_follows_the_rule(store: tuple[Sink, AuditLog, str], rng: random.Random) -> None:
    sink, log, _ = store
    events: list[dict[str, Any]] = []
    for i in range(400):
        details = {"note": phrase(rng), "nested": [phrase(rng), 7]} if rng.random() < 0.4 else None
        events.append({"event_id": f"ev-{i:04d}", "actor_id": "a", "action": "x", "resource_type": "r",
                       "outcome": "success", "message": phrase(rng) if rng.random() < 0.9 else None,
                       "details": details})
    for start in range(0, len(events), 150):
        write(sink, events[start:start + 150])
    texts = {e["event_id"]: search_text(e["message"], msgspec.json.encode(e["details"]).decode()
                                        if e["details"] else None) for e in events}

    queries: list[tuple[str, ...]] = [(w,) for w in ENGLISH + CHINESE + HOSTILE]
    queries += [("翻译完成",), ("机器翻译",), ("FINISHED", "翻译"), ("session", "reviewer", "通过"), ("ses",),
                ("ation",), ("译",), ("译完",), ("nothing-like-this",), ('"AND"',), ("OR", "*")]
    for _ in range(40):  # substrings cut out of stored texts: they must be found
        text = rng.choice([t for t in texts.values() if t])
        start = rng.randrange(len(text))
        word = text[start:start + rng.randint(2, 6)].split()
        if word:
            queries.append((word[0],))
    for words in queries:
        found = search_all(log, words)
        assert len(found) == len(set(found)), words  # no event twice across pages
        must = {i for i, t in texts.items() if must_match(list(words), t)}
        may = {i for i, t in texts.items() if may_match(list(words), t)}
        assert must <= set(found), (words, sorted(must - set(found))[:5])
        assert set(found) <= may, (words, sorted(set(found) - may)[:5])


def test_filters_order_and_idempotence(store: tuple[Sink, AuditLog, str], rng: random.Random) -> None:
    sink, log, _ = store
    base = to_us(datetime(2026, 10, 1, tzinfo=UTC))
    # Times in random order, many equal to the microsecond (they still get distinct places).
    events = [{"event_id": f"f-{i}", "actor_id": f"actor-{i % 4}", "action": f"act.{i % 3}",
               "resource_type": "session", "resource_id": f"r-{i % 5}", "outcome": rng.choice(["success", "failure"]),
               "occurred_at": from_us(base + rng.choice([0, 1, 2, rng.randrange(10**9)]) * 1_000_000)}
              for i in range(300)]
    write(sink, events[:200])
    write(sink, events[100:])  # a replayed batch overlapping the first: stored once
    assert log.count() == 300

    everything = []
    before = None
    while True:
        items, before = log.page(EventFilter(), before, 17)
        everything.extend(items)
        if before is None:
            break
    assert len(everything) == 300
    times = [e.occurred_at for e in everything]
    assert times == sorted(times, reverse=True)
    flt = EventFilter(actor_id="actor-1", outcome="failure", resource_type="session")
    got = {e.event_id for e in log.page(flt, None, 1000)[0]}
    assert got == {e["event_id"] for e in events if e["actor_id"] == "actor-1" and e["outcome"] == "failure"}
    exported = [e.event_id for chunk in log.export(EventFilter(action="act.2")) for e in chunk]
    assert exported == [e.event_id for e in reversed(everything) if e.action == "act.2"]
    assert log.verify(None, None).status == "ok"


def test_verify_names_the_event_changed_behind_the_service(store: tuple[Sink, AuditLog, str]) -> None:
    sink, log, url = store
    write(sink, [{"event_id": f"t-{i}", "actor_id": "a", "action": "x", "resource_type": "r", "outcome": "success",
                  "message": f"message {i}"} for i in range(50)])
    ok = log.verify(None, None)
    assert (ok.status, ok.checked, ok.first_broken_event_id) == ("ok", 50, None)

    tamper(url, "UPDATE audit_events SET message = 'nothing happened' WHERE event_id = 't-17'")
    broken = log.verify(None, None)
    assert (broken.status, broken.first_broken_event_id) == ("broken", "t-17"), broken
    tamper(url, "UPDATE audit_events SET message = 'message 17' WHERE event_id = 't-17'")  # put back
    assert log.verify(None, None).status == "ok"

    tamper(url, "DELETE FROM audit_events WHERE event_id = 't-30'")
    gone = log.verify(None, None)
    assert (gone.status, gone.first_broken_event_id) == ("broken", "t-31"), gone  # its predecessor is missing
    assert len(sink_rows(url, "audit_events", "event_id")) == 49


def test_retention_deletes_the_oldest_and_the_chain_still_verifies(store: tuple[Sink, AuditLog, str]) -> None:
    sink, log, _ = store
    old = datetime(2020, 1, 1, tzinfo=UTC)
    recent = datetime(2026, 1, 1, tzinfo=UTC)
    write(sink, [{"event_id": f"old-{i}", "actor_id": "a", "action": "x", "resource_type": "r", "outcome": "success",
                  "occurred_at": old, "message": "旧的 old"} for i in range(1500)])
    write(sink, [{"event_id": "new-0", "actor_id": "a", "action": "x", "resource_type": "r", "outcome": "success",
                  "occurred_at": recent, "message": "新的 new"}])
    write(sink, [{"event_id": "late-old", "actor_id": "a", "action": "x", "resource_type": "r", "outcome": "success",
                  "occurred_at": old, "message": "旧的 late"}])  # stored after a younger one: waits its turn
    assert sink.retain_audit_events("2025-01-01 00:00:00.000000") == 1500
    assert log.count() == 2
    assert [e.event_id for e in log.page(EventFilter(words=("旧的",)), None, 10)[0]] == ["late-old"]
    assert log.verify(None, None).status == "ok"
    assert sink.retain_audit_events("2025-01-01 00:00:00.000000") == 0
    write(sink, [{"event_id": "after", "actor_id": "a", "action": "x", "resource_type": "r", "outcome": "success"}])
    assert log.verify(None, None).status == "ok" and log.count() == 3


def tamper(url: str, sql: str) -> None:
    """An operator (or an intruder) changing the database behind the service's back."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url[len("sqlite:///"):])
        conn.execute(sql)
        conn.commit()
        conn.close()
        return
    parts = urlsplit(url)
    conn = pymysql.connect(host=parts.hostname, port=parts.port or 3306, user="root", password="",
                           database=parts.path.strip("/"), autocommit=True)
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()
