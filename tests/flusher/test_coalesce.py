"""coalesce() against a model: for any writes in any order, per key the
record with the highest (version, seq) wins, created_at is the earliest
acceptance."""

from __future__ import annotations

import random

import msgspec

from core.records import KIND_SESSIONS, KIND_TASKS, SpoolEntry
from core.times import iso_z
from flusher.coalesce import coalesce

BASE_US = 1_750_000_000_000_000


def _task(task_id: str, status: str, updated_us: int | None) -> dict:
    doc = {"task_id": task_id, "session_id": "s", "batch_id": "b", "sheet_name": "S", "row_index": 0,
           "column_name": "C", "source_text": "x", "status": status}
    if updated_us is not None:
        doc["updated_at"] = iso_z(updated_us)
    return doc


def test_highest_version_wins_in_any_order(rng: random.Random) -> None:
    for _ in range(200):
        entries, writes = [], []
        received = BASE_US
        for seq in range(1, rng.randint(2, 12)):
            received += rng.randint(1, 1000)
            docs = []
            for _ in range(rng.randint(1, 5)):
                key = f"t{rng.randint(0, 4)}"
                updated = BASE_US + rng.randint(-5000, 5000) if rng.random() < 0.6 else None
                status = rng.choice(["pending", "processing", "completed", "failed"])
                docs.append(_task(key, status, updated))
                writes.append((key, updated if updated is not None else received, seq, status, received))
            entries.append(SpoolEntry(seq, KIND_TASKS, received, len(docs),
                                      msgspec.json.encode({"tasks": docs})))
        result = coalesce(entries)
        for key in {w[0] for w in writes}:
            mine = [w for w in writes if w[0] == key]
            best = max(mine, key=lambda w: (w[1], w[2]))  # later write breaks a version tie
            # Within one entry the later item wins a tie too; the model keeps the last max.
            ties = [w for w in mine if (w[1], w[2]) == (best[1], best[2])]
            item = result.by_kind["task"][key]
            assert (item.version, item.seq) == (best[1], best[2])
            assert item.record.status == ties[-1][3]
            assert item.first_received_us == min(w[4] for w in mine)


def test_undecodable_entry_is_reported_not_raised() -> None:
    good = SpoolEntry(1, KIND_SESSIONS, BASE_US, 1, msgspec.json.encode({"sessions": [{
        "session_id": "s", "filename": "f", "file_path": "p", "status": "pending", "llm_provider": "x"}]}))
    bad = SpoolEntry(2, KIND_TASKS, BASE_US, 1, b'{"tasks": [{"task_id": 1}]}')
    unknown = SpoolEntry(3, 99, BASE_US, 1, b"{}")
    result = coalesce([good, bad, unknown])
    assert list(result.by_kind["session"]) == ["s"]
    assert [b.entry.seq for b in result.bad] == [2, 3]
