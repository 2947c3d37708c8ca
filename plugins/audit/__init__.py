"""The audit log's storage (Phase 4), one module per backend: the events
table with its hash chain (chain.py), and search (text.py says what matches).

- sqlite.py: the embedded default, FTS5 (trigram + CJK character pairs);
- mysql.py: MariaDB, with a Mroonga table for search.

The flusher's sink appends events inside its own transaction
(`append_events`); the query process reads through an AuditLog (store.py).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from core.settings import SinkSettings
from plugins.audit.store import AuditLog


def open_audit_log(settings: SinkSettings) -> AuditLog:
    """The audit log in the sink's database."""
    if urlsplit(settings.url).scheme == "mysql":
        from plugins.audit.mysql import MysqlAuditLog
        return MysqlAuditLog(settings)
    from plugins.audit.sqlite import SqliteAuditLog
    return SqliteAuditLog(settings)
