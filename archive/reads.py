"""The query process's side of the archive: find an archived session through
the index and read its frame with one ranged GET; list and sum up what is
archived; publish the archive's gauges."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit, urlunsplit

from archive.frames import decode_session
from archive.index import ArchiveIndex, Entry
from archive.runner import archive_store_settings
from core import metrics
from core.settings import Settings
from persistence_api.archive import ArchiveMonth, ArchiveSummary, AuditArchiveMonth
from plugins import SinkError
from plugins.blobs import BlobStore, BlobStoreError, open_blob_store

logger = logging.getLogger(__name__)
GAUGES_EVERY_S = 60.0


class ArchiveReads:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.index = ArchiveIndex.open(settings.sink)
        self._store_url = archive_store_settings(settings).url
        self._store: BlobStore | None = None

    @property
    def store(self) -> BlobStore:
        if self._store is None:
            self._store = open_blob_store(archive_store_settings(self.settings))
        return self._store

    def close(self) -> None:
        self.index.close()
        if self._store is not None:
            self._store.close()

    def archived(self, session_id: str) -> Entry | None:
        """The session's index entry while it is archived (not once restored)."""
        entry = self.index.get(session_id)
        return entry if entry is not None and entry.state == "archived" else None

    def read(self, entry: Entry) -> tuple[tuple, list[tuple]]:
        end = entry.frame_offset + entry.frame_bytes
        frame = b"".join(self.store.read(entry.object_key, entry.frame_offset, end))
        return decode_session(frame, entry.session_id)

    def summary(self) -> ArchiveSummary:
        sessions = [ArchiveMonth(*m) for m in self.index.months()]
        audit = [AuditArchiveMonth(*m) for m in self.index.audit_months()]
        return ArchiveSummary(self.location, self.settings.archive.after_days, sessions, audit)

    @property
    def location(self) -> str:
        url = urlsplit(self._store_url)
        netloc = (url.hostname or "") if url.username or url.password else url.netloc  # never a credential
        return urlunsplit((url.scheme, netloc, url.path.rstrip("/") + "/archive", url.query, ""))

    def publish(self) -> None:
        summary = self.summary()
        metrics.ARCHIVE_STORED_ROWS.labels("sessions").set(sum(m.sessions for m in summary.sessions))
        metrics.ARCHIVE_STORED_ROWS.labels("tasks").set(sum(m.tasks for m in summary.sessions))
        metrics.ARCHIVE_STORED_ROWS.labels("audit_events").set(sum(m.events for m in summary.audit))
        metrics.ARCHIVE_STORED_BYTES.labels("sessions").set(sum(m.archived_bytes for m in summary.sessions))
        metrics.ARCHIVE_STORED_BYTES.labels("audit").set(sum(m.archived_bytes for m in summary.audit))


async def housekeeping(reads: ArchiveReads) -> None:
    """The archive's gauges, from its index, every minute."""
    while True:
        try:
            await asyncio.to_thread(reads.publish)
        except (SinkError, BlobStoreError) as exc:  # the database is away: the next round tries again
            logger.warning("archive gauges not refreshed: %s", exc)
        await asyncio.sleep(GAUGES_EVERY_S)
