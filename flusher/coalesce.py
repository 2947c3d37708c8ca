"""Decoding spool entries and coalescing their records by key. Pure: no I/O."""

from __future__ import annotations

import msgspec
from msgspec import DecodeError, Struct, ValidationError

from core.records import (JSON_ENCODER, KIND_SESSIONS, KIND_TASKS, SESSION_DECODER, TASK_DECODER, Session,
                          SpoolEntry, Task, version_us)


class Item(Struct):
    """One record with what decides which write of its key wins."""
    key: str
    version: int
    seq: int  # spool order breaks version ties: the later write wins
    received_at_us: int
    record: Session | Task
    held_id: int = 0  # set when the item comes back from the held table
    first_received_us: int = 0  # earliest acceptance of this key seen: becomes created_at

    def __post_init__(self) -> None:
        if not self.first_received_us:
            self.first_received_us = self.received_at_us


class BadEntry(Struct):
    """An entry, or one record of it (record_key and payload set), that cannot be decoded."""
    entry: SpoolEntry
    error: str
    record_key: str = ""
    payload: bytes = b""


class Coalesced(Struct):
    sessions: dict[str, Item]
    tasks: dict[str, Item]
    bad: list[BadEntry]


def coalesce(entries: list[SpoolEntry]) -> Coalesced:
    """Per key, keep the record with the highest (version, seq)."""
    out = Coalesced({}, {}, [])
    for entry in entries:
        records: list[Session] | list[Task] | list[Session | Task]
        try:
            records = _decode(entry)
        except ValidationError:
            # Valid when it was accepted, refused by today's rules: keep the good
            # records, set the others apart one by one.
            records = _decode_each(entry, out.bad)
        except DecodeError as exc:
            out.bad.append(BadEntry(entry, f"undecodable spool entry: {exc}"))
            continue
        target = out.sessions if entry.kind == KIND_SESSIONS else out.tasks
        for record in records:
            key = record.session_id if isinstance(record, Session) else record.task_id
            merge(target, Item(key, version_us(record, entry.received_at_us), entry.seq,
                               entry.received_at_us, record))
    return out


def merge(target: dict[str, Item], item: Item) -> None:
    current = target.get(item.key)
    if current is None:
        target[item.key] = item
        return
    first = min(current.first_received_us, item.first_received_us)
    if (item.version, item.seq) >= (current.version, current.seq):
        target[item.key] = current = item
    current.first_received_us = first


def _decode(entry: SpoolEntry) -> list[Session] | list[Task]:
    if entry.kind == KIND_SESSIONS:
        return SESSION_DECODER.decode(entry.payload).sessions
    if entry.kind == KIND_TASKS:
        return TASK_DECODER.decode(entry.payload).tasks
    raise DecodeError(f"unknown entry kind {entry.kind}")


def _decode_each(entry: SpoolEntry, bad: list[BadEntry]) -> list[Session | Task]:
    """The records of an entry that decode; each one that does not goes to bad."""
    record_type: type[Session] | type[Task] = Session if entry.kind == KIND_SESSIONS else Task
    key_field = "session_id" if entry.kind == KIND_SESSIONS else "task_id"
    body = msgspec.json.decode(entry.payload)
    items = body.get("sessions" if entry.kind == KIND_SESSIONS else "tasks") if isinstance(body, dict) else None
    if not isinstance(items, list):
        bad.append(BadEntry(entry, "undecodable spool entry: no list of records"))
        return []
    records: list[Session | Task] = []
    for raw in items:
        try:
            records.append(msgspec.convert(raw, record_type))
        except ValidationError as exc:
            key = raw.get(key_field) if isinstance(raw, dict) else None
            bad.append(BadEntry(entry, f"invalid record: {exc}", key if isinstance(key, str) else "",
                                JSON_ENCODER.encode(raw)))
    return records
