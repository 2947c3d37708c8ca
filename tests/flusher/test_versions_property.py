"""Property: for any writes, split into any batches, arriving in any order and
replayed any number of times, each real sink ends with the highest version of
every key (the later spool entry breaking a tie), and created_at is the
earliest acceptance."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.records import KIND_TASKS, SpoolEntry
from core.settings import SinkSettings
from core.times import iso_z
from flusher.coalesce import coalesce
from plugins.tables import SESSION_TABLE, TASK_TABLE, TableRows
from plugins import Sink, open_sink
from testkit.service import sink_rows

T0 = 1_750_000_000_000_000
KEYS = ["a", "b", "c"]
STATUSES = ["pending", "processing", "completed", "failed"]

write = st.tuples(st.sampled_from(KEYS), st.sampled_from(STATUSES), st.one_of(st.none(), st.integers(0, 20)))
entry_writes = st.lists(st.lists(write, min_size=1, max_size=4), min_size=1, max_size=8)


@pytest.fixture
def sink(sink_url: str) -> Iterator[Sink]:
    sink = open_sink(SinkSettings(url=sink_url))
    sink.migrate()
    yield sink
    sink.close()


def _version(seq: int, index: int, updated: int | None) -> int:
    # Acceptance times are multiples of 500 us in spool order; explicit versions are
    # unique and never equal to one: ties cannot arise, so every order has one right answer.
    return T0 + seq * 2500 if updated is None else T0 + updated * 1000 + seq * 40 + index + 7


def _entries(groups: list[list[tuple]]) -> list[SpoolEntry]:
    entries = []
    for seq, group in enumerate(groups, start=1):
        docs = []
        for index, (key, status, updated) in enumerate(group):
            doc = {"task_id": key, "session_id": "s", "batch_id": "b", "sheet_name": "S", "row_index": 0,
                   "column_name": "C", "source_text": status, "status": status}
            if updated is not None:
                doc["updated_at"] = iso_z(_version(seq, index, updated))
            docs.append(doc)
        entries.append(SpoolEntry(seq, KIND_TASKS, T0 + seq * 2500, len(docs), msgspec.json.encode({"tasks": docs})))
    return entries


def _expected(groups: list[list[tuple]]) -> dict[str, str]:
    best: dict[str, tuple[int, str]] = {}
    for seq, group in enumerate(groups, start=1):
        for index, (key, status, updated) in enumerate(group):
            version = _version(seq, index, updated)
            if key not in best or version >= best[key][0]:  # same entry, no updated_at: the later item
                best[key] = (version, status)
    return {key: status for key, (_, status) in best.items()}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(groups=entry_writes, data=st.data())
def test_sink_keeps_the_highest_version(sink: Sink, sink_url: str, groups: list[list[tuple]],
                                        data: st.DataObject) -> None:
    sink.delete_session("s")  # the fixture's sink lives across examples: start each one empty
    entries = _entries(groups)
    # Split into batches as the flusher might, then deliver them in any order, some twice (replays).
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(entries) - 1)), max_size=len(entries))))
    batches = [entries[a:b] for a, b in zip([0, *cuts], [*cuts, len(entries)]) if entries[a:b]]
    order = data.draw(st.permutations(batches))
    replays = data.draw(st.lists(st.sampled_from(batches), max_size=2))
    sink.write([TableRows(SESSION_TABLE, [("s", "f", "p", "pending", "x", None, None, 0, 0, 0, 0,
                                          "2025-01-01 00:00:00.000000", "2025-01-01 00:00:00.000000")])])
    for batch in [*order, *replays]:
        merged = coalesce(batch)
        items = sorted(merged.by_kind["task"].values(), key=lambda i: i.key)
        sink.write([TableRows(TASK_TABLE, [TASK_TABLE.to_row(i.record, i.version, i.first_received_us)
                                           for i in items])])
    stored = {r["task_id"]: r["status"] for r in sink_rows(sink_url, "translation_tasks", "task_id, status")}
    assert stored == _expected(groups)
