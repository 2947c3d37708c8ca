"""Audit events past their retention are archived before they are deleted,
on each sink: the archive objects hold every deleted event with every stored
column (the chain's hashes included) exactly as the table held it, the index
names each object, and the chain that stays still verifies."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec

from archive.frames import decode_lines
from archive.runner import Archiver, _plain
from core.records import KIND_AUDIT_RETENTION, AuditRetentionCommand, SpoolEntry
from core.settings import FilesSettings, Settings, SinkSettings
from core.times import to_us
from flusher.commands import apply_command
from plugins.audit import open_audit_log
from testkit.service import sink_rows
from tests.plugins.test_audit_store_contract import store, write  # noqa: F401 (the fixture)


def test_retention_archives_every_event_before_deleting_it(store, tmp_path: Path) -> None:  # noqa: F811
    sink, log, url = store
    old = datetime(2020, 1, 1, tzinfo=UTC)
    write(sink, [{"event_id": f"old-{i}", "actor_id": "a", "action": "x", "resource_type": "r", "outcome": "success",
                  "occurred_at": old, "message": f"旧的 {i}", "details": {"n": i, "s": "x\u0000y"}}
                 for i in range(1500)])
    write(sink, [{"event_id": "new-0", "actor_id": "a", "action": "x", "resource_type": "r", "outcome": "success",
                  "occurred_at": datetime(2026, 1, 1, tzinfo=UTC)}])
    before = {r["event_id"]: {k: _plain(v) for k, v in r.items()} for r in sink_rows(url, "audit_events")}
    settings = Settings(sink=SinkSettings(url=url), files=FilesSettings(url=f"file:///{tmp_path / 'files'}"))
    archiver = Archiver(settings)
    try:
        command = AuditRetentionCommand(days=365, archive=True)
        entry = SpoolEntry(1, KIND_AUDIT_RETENTION, to_us(datetime(2025, 6, 1, tzinfo=UTC)), 1,
                           msgspec.json.encode(command))
        result = apply_command(entry, sink, archiver).result
        assert msgspec.to_builtins(result) == {"status": "retained", "deleted_events": 1500, "archived_events": 1500}
        objects = archiver.index.audit_objects("2020-01")
        assert [o[2] for o in objects] == [1000, 500]  # retention's chunks, one object each
        archived = []
        for key, *_ in objects:
            archived += decode_lines(b"".join(archiver.store.read(key)))
        assert len(archived) == 1500
        assert {e["event_id"]: e for e in archived} == {k: v for k, v in before.items() if k.startswith("old-")}
        assert [e["seq"] for e in archived] == sorted(e["seq"] for e in archived)
        assert [e["event_id"] for e in sink_rows(url, "audit_events")] == ["new-0"]
        assert log.verify(None, None).status == "ok"
        summary = archiver.index.audit_months()
        assert [(m.month, m.events, m.objects) for m in summary] == [("2020-01", 1500, 2)]
    finally:
        archiver.close()
    again = open_audit_log(SinkSettings(url=url))
    assert again.count() == 1
    again.close()
