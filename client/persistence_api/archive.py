"""The archive of API.md "Backups and the archive (Phase 5)": finished
sessions moved out of the hot tables, listed, read back and restored."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from persistence_api.translation import IsoTime, SessionSummary


class ArchivedSessionSummary(SessionSummary):
    archived_at: IsoTime


class ArchivedSessionList(Struct):
    items: list[ArchivedSessionSummary]  # newest created first
    next_cursor: str | None


class ArchiveMonth(Struct):
    """Sessions archived from one month (of their last update)."""
    month: str  # "2026-11"
    sessions: int
    tasks: int
    archived_bytes: int  # compressed
    objects: int


class AuditArchiveMonth(Struct):
    """Audit events archived before their retention deleted them, by month of occurrence."""
    month: str
    events: int
    archived_bytes: int
    objects: int


class ArchiveSummary(Struct):
    location: str  # the store's URL (no credentials): objects under archive/sessions/<month>/ and archive/audit/<month>/
    after_days: float  # archive.after_days (0: no scheduled archiving)
    sessions: list[ArchiveMonth]
    audit: list[AuditArchiveMonth]


class ArchiveRun(Struct, forbid_unknown_fields=True):
    """POST /api/v1/translation/archive/run: archive now what finished more than after_days ago."""
    after_days: Annotated[float, Meta(ge=0, le=3_650_000)] | None = None  # None: archive.after_days
