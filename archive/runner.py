"""The flusher's side of the archive: the two commands it applies in spool
order (so no write acknowledged before them is missed, and none after them
is deleted).

Archive: read due sessions and their tasks, store one object per month
(frames of JSON lines, archive/frames.py), then in one transaction record
the index rows and delete the sessions from the hot tables. Killed before
that transaction, the sessions are still hot (the object is left unreferenced,
and the replayed command writes a new one); after it, they are in the index.
A session archived earlier and written again since (a late status change)
is archived again merged with its archived copy, per key the higher version.

Restore: write the archived rows back through the sink's versioned upsert
(created_at and updated_at as they were), then mark the index row restored;
a restored session is not archived again for archive.after_days."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from dataclasses import dataclass, field

import msgspec
import zstandard

from archive.frames import decode_session, encode_rows, encode_session, month_of
from archive.index import AUDIT_COLUMNS, ArchiveIndex, Entry
from core import metrics
from core.records import Archived, ArchiveRestored, CommandNotFound
from core.settings import FilesSettings, Settings
from core.times import db_text, now_us
from plugins import Sink, TransientSinkError
from plugins.blobs import BlobStore, open_blob_store
from plugins.reader import Page, PageRequest, Reader, ReadError, SessionFilter, TaskFilter, open_reader
from plugins.tables import SESSION_TABLE, TASK_TABLE, TableRows

logger = logging.getLogger(__name__)

DAY_US = 86_400_000_000
AUDIT_INSERT = (f"REPLACE INTO archived_audit ({', '.join(AUDIT_COLUMNS)})"
                f" VALUES ({', '.join(['%s'] * len(AUDIT_COLUMNS))})")
SESSION_PAGE = 200
TASK_PAGE = 5000
RESTORE_CHUNK = 5000  # task rows per restore transaction
FINISHED = ("completed", "failed")
_UPDATED = SESSION_TABLE.columns.index("updated_at")
_CREATED = SESSION_TABLE.columns.index("created_at")
_STATUS = SESSION_TABLE.columns.index("status")
_ROW_JSON = msgspec.json.Encoder()
_TASK_UPDATED = TASK_TABLE.columns.index("updated_at")


def session_key(month: str, at_us: int, seq: int) -> str:
    """archive/sessions/<month>/<time>-<seq>-<random>.jsonl.zst: a replayed command never overwrites an
    object an earlier try wrote (its sessions may already be deleted)."""
    return f"archive/sessions/{month}/{at_us}-{seq}-{secrets.token_hex(4)}.jsonl.zst"


@dataclass
class _Due:
    session: tuple
    tasks: list[tuple]


@dataclass
class _Month:
    frames: list[bytes] = field(default_factory=list)
    sessions: list[_Due] = field(default_factory=list)


class Archiver:
    """Opened lazily by the flusher: a service that never archives opens nothing."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._reader: Reader | None = None
        self._index: ArchiveIndex | None = None
        self._store: BlobStore | None = None
        self._compressor = zstandard.ZstdCompressor(level=settings.archive.compression_level)

    @property
    def index(self) -> ArchiveIndex:
        if self._index is None:
            self._index = ArchiveIndex.open(self._settings.sink)
        return self._index

    @property
    def store(self) -> BlobStore:
        if self._store is None:
            self._store = open_blob_store(archive_store_settings(self._settings))
        return self._store

    @property
    def reader(self) -> Reader:
        if self._reader is None:
            self._reader = open_reader(self._settings.sink)
        return self._reader

    def close(self) -> None:
        for part in (self._reader, self._index, self._store):
            if part is not None:
                part.close()

    # -- archive -----------------------------------------------------------------

    def archive(self, days: float, max_tasks: int, seq: int, accepted_us: int) -> Archived:
        before = db_text(max(accepted_us - int(days * DAY_US), 0))
        due, more = self._due(before, max_tasks)
        if not due:
            return Archived(0, 0, 0, 0, False)
        months: dict[str, _Month] = {}
        for item in due:
            month = months.setdefault(month_of(item.session[_UPDATED]), _Month())
            month.frames.append(encode_session(item.session, item.tasks, self._compressor))
            month.sessions.append(item)
        at = db_text(now_us())
        entries: list[Entry] = []
        stored = 0
        for name, month in sorted(months.items()):
            key = session_key(name, accepted_us, seq)
            offset = 0
            writer = self.store.writer(key)
            try:
                for frame, item in zip(month.frames, month.sessions):
                    writer.write(frame)
                    entries.append(Entry(item.session[0], "archived", item.session[_STATUS], item.session[_CREATED],
                                         _ROW_JSON.encode(list(item.session)).decode(), name, key, offset,
                                         len(frame), len(item.tasks), at, None))
                    offset += len(frame)
                writer.commit()  # durable before any index row names it
            except BaseException:
                writer.abort()
                raise
            stored += offset
        self.index.move_out(entries)
        tasks = sum(len(item.tasks) for item in due)
        metrics.ARCHIVED_ROWS.labels("sessions").inc(len(due))
        metrics.ARCHIVED_ROWS.labels("tasks").inc(tasks)
        metrics.ARCHIVED_BYTES.labels("sessions").inc(stored)
        logger.info("archived %d sessions with %d tasks into %d objects (%d bytes)", len(due), tasks, len(months),
                    stored)
        return Archived(len(due), tasks, len(months), stored, more)

    def _due(self, before: str, max_tasks: int) -> tuple[list[_Due], bool]:
        """Sessions finished before `before`, oldest first, until max_tasks tasks are gathered."""
        due: list[_Due] = []
        tasks = 0
        keep_restored_after = before  # restored since `before`: kept hot for after_days
        for rows in self._finished_before(before):
            known = self.index.lookup([row[0] for row in rows])
            for row in rows:
                if due and tasks >= max_tasks:
                    return due, True
                earlier = known.get(row[0])
                if self._kept_hot(earlier, keep_restored_after):
                    continue
                task_rows = list(self._tasks_of(row[0]))
                session = row
                if earlier is not None and earlier.state == "archived":  # written again since it was archived
                    session, task_rows = self._merged(earlier, row, task_rows)
                due.append(_Due(session, task_rows))
                tasks += len(task_rows)
        return due, False

    @staticmethod
    def _kept_hot(earlier: Entry | None, restored_since: str) -> bool:
        return earlier is not None and earlier.state == "restored" and (earlier.restored_at or "") >= restored_since

    def _finished_before(self, before: str) -> Iterator[list[tuple]]:
        """Pages of sessions finished before `before`, oldest first, one status at a time (an index range on
        (status, updated_at), no sort)."""
        for status in FINISHED:
            flt = SessionFilter(statuses=(status,), sort_by="updated_at", descending=False)
            after = None
            while True:
                request = PageRequest(limit=SESSION_PAGE, after=after)
                page = self._read(lambda: self.reader.sessions(flt, request))
                rows = [row for row in page.rows if row[_UPDATED] < before]
                if rows:
                    yield rows
                if len(rows) < len(page.rows) or not page.has_more:
                    break
                after = page.last_key

    def _tasks_of(self, session_id: str) -> Iterator[tuple]:
        flt = TaskFilter(session_id=session_id, by_layout=True)
        after = None
        while True:
            request = PageRequest(limit=TASK_PAGE, after=after)
            page = self._read(lambda: self.reader.tasks(flt, request))
            yield from page.rows
            if not page.has_more:
                return
            after = page.last_key

    def _merged(self, earlier: Entry, session: tuple, tasks: list[tuple]) -> tuple[tuple, list[tuple]]:
        old_session, old_tasks = self.read_frame(earlier)
        by_id = {t[0]: t for t in old_tasks}
        for t in tasks:
            old = by_id.get(t[0])
            if old is None or t[_TASK_UPDATED] >= old[_TASK_UPDATED]:
                by_id[t[0]] = t
        newer = session if session[_UPDATED] >= old_session[_UPDATED] else old_session
        return newer, sorted(by_id.values(), key=_layout)

    def read_frame(self, entry: Entry) -> tuple[tuple, list[tuple]]:
        frame = b"".join(self.store.read(entry.object_key, entry.frame_offset, entry.frame_offset + entry.frame_bytes))
        return decode_session(frame, entry.session_id)

    @staticmethod
    def _read(fetch: Callable[[], Page]) -> Page:
        try:
            return fetch()
        except ReadError as exc:  # the database did not answer: the flusher retries the command
            raise TransientSinkError(f"archive: {exc}") from exc

    # -- audit events ------------------------------------------------------------

    def prepare(self) -> None:
        """Make the index tables before a transaction of the sink's writes to them."""
        self.index.migrate()

    def audit_chunk(self, execute: Callable[..., Any], columns: Sequence[str], rows: list[tuple]) -> None:
        """Called in the retention transaction before the chunk is deleted: store the events (every stored
        column, the chain's hashes included) as one object, and record it in the same transaction."""
        events = [tuple(_plain(v) for v in row) for row in rows]
        seq, occurred = columns.index("seq"), columns.index("occurred_at")
        first, last = events[0], events[-1]
        month = month_of(first[occurred])
        key = f"archive/audit/{month}/{first[seq]:012d}-{last[seq]:012d}-{secrets.token_hex(4)}.jsonl.zst"
        data = encode_rows(columns, events, self._compressor)
        writer = self.store.writer(key)
        try:
            writer.write(data)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        execute(AUDIT_INSERT, key, month, len(events), len(data), first[seq], last[seq], first[occurred],
                max(str(e[occurred]) for e in events), db_text(now_us()))
        metrics.ARCHIVED_ROWS.labels("audit_events").inc(len(events))
        metrics.ARCHIVED_BYTES.labels("audit").inc(len(data))

    # -- restore -----------------------------------------------------------------

    def restore(self, session_id: str, sink: Sink, accepted_us: int) -> ArchiveRestored | CommandNotFound:
        entry = self.index.get(session_id)
        at = db_text(accepted_us)
        if entry is None or (entry.state == "restored" and entry.restored_at != at):  # not a replay of this one
            return CommandNotFound(session_id)
        session, tasks = self.read_frame(entry)
        sink.write([TableRows(SESSION_TABLE, [session])])
        for start in range(0, len(tasks), RESTORE_CHUNK):
            chunk = sorted(tasks[start:start + RESTORE_CHUNK], key=lambda t: t[0])
            sink.write([TableRows(TASK_TABLE, chunk)])
        self.index.mark_restored(session_id, at)
        metrics.ARCHIVE_RESTORES.inc()
        return ArchiveRestored(session_id, len(tasks))


def _plain(value: Any) -> Any:
    """A value as JSON holds it, times as the sink's storage text."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    return value


def _layout(task: tuple) -> tuple:
    """The order a session's tasks are read in: sheet_name, row_index, column_name, task_id."""
    return tuple((v is None, v if v is not None else 0) for v in (task[3], task[4], task[5], task[0]))


def archive_store_settings(settings: Settings) -> FilesSettings:
    """The store archive objects live in: archive.url, else the files store."""
    if not settings.archive.url:
        return settings.files
    return msgspec.structs.replace(settings.files, url=settings.archive.url)
