"""Backups of API.md "Backups and the archive (Phase 5)": what
/api/v1/system/backups answers (admin)."""

from __future__ import annotations

from typing import Literal

from msgspec import Struct

from persistence_api.translation import IsoTime

BackupStatus = Literal["running", "completed", "failed"]


class BackupRecords(Struct):
    """Records in the backup: the sink's tables at the snapshot, and what
    waited in the spool (accepted, not yet written) when it was copied."""
    sessions: int = 0
    tasks: int = 0
    files: int = 0
    users: int = 0
    audit_events: int = 0
    spool_records: int = 0


class Backup(Struct):
    backup_id: str
    status: BackupStatus
    started_at: IsoTime
    finished_at: IsoTime | None
    size_bytes: int  # compressed bytes stored
    sink: str  # "sqlite" or "mysql"
    location: str  # where it is kept: the store's URL (no credentials) and prefix
    records: BackupRecords
    error: str | None = None
    trigger: str = "api"  # "api", "cli" or "schedule"


class BackupList(Struct):
    items: list[Backup]  # newest first


class BackupStarted(Struct):
    backup_id: str
    status: BackupStatus


class BackupVerification(Struct):
    backup_id: str
    status: Literal["ok", "damaged"]
    checked_bytes: int
    problems: list[str]
