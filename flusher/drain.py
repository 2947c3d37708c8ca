"""One drain cycle: coalesce the entries read, hold orphan tasks, write to the
sink in one transaction, then trim the spool (commit_drain). A crash anywhere
before commit_drain replays the same entries; the sink's versioned upserts
make the replay harmless."""

from __future__ import annotations

import logging

import msgspec
from msgspec import Struct

from core.records import (COMMAND_TYPES, JSON_ENCODER, KIND_SESSIONS, KIND_TASKS, SpoolEntry, Task,
                          session_row, task_row, version_us)
from core.settings import FlushSettings
from core.times import now_us
from flusher.coalesce import Item, coalesce, merge
from flusher.commands import apply_command, encode_result
from plugins import RejectedRows, Sink
from wal import Spool
from wal.types import DeadLetter, DrainCommit, HeldTask

logger = logging.getLogger(__name__)

KNOWN_SESSIONS_MAX = 200_000  # cache of session ids seen in the sink; cleared when full
_TASK_DECODER = msgspec.json.Decoder(Task)


class DrainReport(Struct):
    through_seq: int
    sessions_written: int
    tasks_written: int
    held: int
    released: int
    dead: int
    rejected: int = 0  # rows the database refused for good (a subset of dead)
    dead_sessions: int = 0


class Drainer:
    def __init__(self, spool: Spool, sink: Sink, settings: FlushSettings) -> None:
        self._spool = spool
        self._sink = sink
        self._settings = settings
        self._known_sessions: set[str] = set()

    def drain_once(self, entries: list[SpoolEntry], held: list[HeldTask] | None = None) -> DrainReport:
        """Write these entries (and any held tasks passed back in) to the sink,
        then trim them from the spool. Raises TransientSinkError with nothing
        trimmed."""
        if entries and entries[0].kind in COMMAND_TYPES:
            return self._apply_command(entries[0])
        batch = coalesce(entries)
        dead = [DeadLetter(b.entry.seq, b.entry.kind, "", b.entry.received_at_us, b.error, b.entry.payload)
                for b in batch.bad]
        released, expired = self._split_held(held or [])
        for item in released:
            merge(batch.tasks, item)
        dead.extend(expired)
        sessions = sorted(batch.sessions.values(), key=_key)
        writable, orphans = self._separate_orphans(sessions, sorted(batch.tasks.values(), key=_key))
        rejected = self._write_isolating(sessions, writable)
        dead.extend(rejected)
        self._known_sessions.update(i.key for i in sessions)
        now = now_us()
        hold = [HeldTask(i.key, i.record.session_id, i.received_at_us, now, _encode_task(i))
                for i in orphans if not i.held_id]
        # An orphan already held stays where it is; released ones leave the table.
        release = [h.id for h in held or [] if h.id not in {i.held_id for i in orphans}]
        change = DrainCommit(
            through_seq=entries[-1].seq if entries else 0,
            sessions_written=len(sessions) - _count(rejected, KIND_SESSIONS),
            tasks_written=len(writable) - _count(rejected, KIND_TASKS),
            hold=hold, release=release, dead=dead)
        self._spool.commit_drain(change)
        return DrainReport(change.through_seq, change.sessions_written, change.tasks_written,
                           len(hold), len(release), len(dead), len(rejected), _count(dead, KIND_SESSIONS))

    def _apply_command(self, entry: SpoolEntry) -> DrainReport:
        applied = apply_command(entry, self._sink)
        drop_held = []
        if applied.deleted_session is not None:
            self._known_sessions.discard(applied.deleted_session)
            drop_held.append((applied.deleted_session, entry.received_at_us))
        self._spool.commit_drain(DrainCommit(through_seq=entry.seq, results=[(entry.seq, encode_result(applied))],
                                             drop_held=drop_held))
        return DrainReport(entry.seq, 0, 0, 0, 0, 0)

    def _split_held(self, held: list[HeldTask]) -> tuple[list[Item], list[DeadLetter]]:
        """Held tasks come back as items; those past orphan_grace become dead letters."""
        grace_us = int(self._settings.orphan_grace * 1_000_000)
        now = now_us()
        items, expired = [], []
        for h in held:
            if now - h.held_since_us >= grace_us:
                expired.append(DeadLetter(0, KIND_TASKS, h.task_id, h.received_at_us,
                                          f"orphan: session {h.session_id!r} not found within "
                                          f"orphan_grace ({self._settings.orphan_grace:g} s)", h.payload))
                continue
            task = _TASK_DECODER.decode(h.payload)
            items.append(Item(h.task_id, version_us(task, h.received_at_us), 0, h.received_at_us, task, h.id))
        return items, expired

    def _separate_orphans(self, sessions: list[Item], tasks: list[Item]) -> tuple[list[Item], list[Item]]:
        present = {i.key for i in sessions} | self._known_sessions
        unknown = {t.record.session_id for t in tasks} - present
        if unknown:
            found = self._sink.existing_sessions(unknown)
            self._remember(found)
            present |= found
        writable = [t for t in tasks if t.record.session_id in present]
        orphans = [t for t in tasks if t.record.session_id not in present]
        return writable, orphans

    def _remember(self, session_ids: set[str]) -> None:
        if len(self._known_sessions) + len(session_ids) > KNOWN_SESSIONS_MAX:
            self._known_sessions.clear()
        self._known_sessions.update(session_ids)

    def _write_isolating(self, sessions: list[Item], tasks: list[Item]) -> list[DeadLetter]:
        """Write in one transaction; if the database refuses the batch for
        good, split it until the refused rows are alone and dead-letter them."""
        if not sessions and not tasks:
            return []
        try:
            self._sink.write([_row(i) for i in sessions], [_row(i) for i in tasks])
            return []
        except RejectedRows as exc:
            if len(sessions) + len(tasks) == 1:
                item = (sessions or tasks)[0]
                logger.warning("record %s refused by the database: %s", item.key, exc.reason)
                return [_dead(item, exc.reason)]
        if sessions and tasks:
            return self._write_isolating(sessions, []) + self._write_isolating([], tasks)
        items = sessions or tasks
        half = len(items) // 2
        if sessions:
            return self._write_isolating(items[:half], []) + self._write_isolating(items[half:], [])
        return self._write_isolating([], items[:half]) + self._write_isolating([], items[half:])


def _key(item: Item) -> str:
    return item.key


def _row(item: Item) -> tuple:
    make = task_row if isinstance(item.record, Task) else session_row
    return make(item.record, item.version, item.first_received_us)


def _encode_task(item: Item) -> bytes:
    return JSON_ENCODER.encode(item.record)


def _dead(item: Item, reason: str) -> DeadLetter:
    kind = KIND_TASKS if isinstance(item.record, Task) else KIND_SESSIONS
    return DeadLetter(item.seq, kind, item.key, item.received_at_us, reason, JSON_ENCODER.encode(item.record))


def _count(dead: list[DeadLetter], kind: int) -> int:
    return sum(1 for d in dead if d.kind == kind)
