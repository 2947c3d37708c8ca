"""Decoding spool entries and coalescing their records by key. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from msgspec import DecodeError, Struct, ValidationError

from core.kinds import BY_ENTRY_KIND, RecordKind
from core.records import JSON_ENCODER, SpoolEntry


class Item(Struct):
    """One record with what decides which write of its key wins."""
    key: str
    version: int
    seq: int  # spool order breaks version ties: the later write wins
    received_at_us: int
    record: Any  # the kind's wire Struct
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
    by_kind: dict[str, dict[str, Item]]  # kind name -> key -> the winning write
    bad: list[BadEntry]

    def of(self, kind: RecordKind) -> dict[str, Item]:
        return self.by_kind.setdefault(kind.name, {})


def coalesce(entries: list[SpoolEntry]) -> Coalesced:
    """Per kind and key, keep the record with the highest (version, seq); of
    an append kind's, the first in spool (and batch) order."""
    out = Coalesced({}, [])
    for entry in entries:
        kind = BY_ENTRY_KIND.get(entry.kind)
        if kind is None:
            out.bad.append(BadEntry(entry, f"undecodable spool entry: unknown entry kind {entry.kind}"))
            continue
        records: Sequence[Any]
        try:
            records = kind.decode(entry.payload)
        except ValidationError:
            # Valid when it was accepted, refused by today's rules: keep the good
            # records, set the others apart one by one.
            records = _decode_each(kind, entry, out.bad)
        except DecodeError as exc:
            out.bad.append(BadEntry(entry, f"undecodable spool entry: {exc}"))
            continue
        target = out.of(kind)
        if kind.write == "append":
            for record in records:
                target.setdefault(kind.key(record), Item(kind.key(record), 0, entry.seq, entry.received_at_us, record))
            continue
        for record in records:
            merge(target, Item(kind.key(record), kind.version(record, entry.received_at_us), entry.seq,
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


def _decode_each(kind: RecordKind, entry: SpoolEntry, bad: list[BadEntry]) -> list[Any]:
    """The records of an entry that decode; each one that does not goes to bad."""
    body = msgspec.json.decode(entry.payload)
    items = body.get(kind.batch_field) if isinstance(body, dict) else None
    if not isinstance(items, list):
        bad.append(BadEntry(entry, "undecodable spool entry: no list of records"))
        return []
    records = []
    for raw in items:
        try:
            records.append(msgspec.convert(raw, kind.record))
        except ValidationError as exc:
            key = raw.get(kind.key_field) if isinstance(raw, dict) else None
            bad.append(BadEntry(entry, f"invalid record: {exc}", key if isinstance(key, str) else "",
                                JSON_ENCODER.encode(raw)))
    return records
