"""Audit events (Phase 4): the wire types of API.md "Audit log", defined once
and used to validate batches, to decode spooled payloads, to encode answers
and to generate /openapi.json.

Events travel like translation records (a record kind, core/kinds.py), but
they are appended, never changed: the first write of an `event_id` is the one
stored. Ingest fills in what the client may leave out (`event_id`,
`occurred_at`) before the batch is spooled, so a replay stores the same event.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from persistence_api.times import from_us, to_us
from persistence_api.translation import MAX_BATCH_ITEMS, IsoTime, JsonDocument, Time, json_problem

_JSON_ENCODER = msgspec.json.Encoder()

ActorType = Literal["user", "service", "system"]
Outcome = Literal["success", "failure"]
ACTOR_TYPES = ("user", "service", "system")
OUTCOMES = ("success", "failure")
MAX_MESSAGE_BYTES = 4096
MAX_DETAILS_BYTES = 32_768
# An event's place in the newest-first order is one 64-bit integer that both
# search indexes use as their row id: its occurred_at millisecond * 2**20 + a
# slot (plugins/audit/chain.py), so occurred_at must lie where that fits.
MIN_OCCURRED_US = to_us(datetime(1700, 1, 1, tzinfo=UTC))
MAX_OCCURRED_US = to_us(datetime(2240, 1, 1, tzinfo=UTC))

EventId = Annotated[str, Meta(min_length=1, max_length=64)]
ActorId = Annotated[str, Meta(min_length=1, max_length=128)]
Name64 = Annotated[str, Meta(min_length=1, max_length=64)]
ResourceId = Annotated[str, Meta(max_length=255)]
Ip = Annotated[str, Meta(max_length=64)]
UserAgent = Annotated[str, Meta(max_length=512)]
RequestId = Annotated[str, Meta(max_length=128)]
Message = Annotated[str, Meta(max_length=MAX_MESSAGE_BYTES)]


class AuditEvent(Struct, omit_defaults=True, forbid_unknown_fields=True):
    """One event as posted and as spooled (ingest fills event_id and occurred_at in)."""
    actor_id: ActorId
    action: Name64
    resource_type: Name64
    outcome: Outcome
    event_id: EventId | None = None
    occurred_at: Time | None = None
    actor_type: ActorType | None = None
    resource_id: ResourceId | None = None
    ip: Ip | None = None
    user_agent: UserAgent | None = None
    request_id: RequestId | None = None
    message: Message | None = None
    details: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # msgspec limits characters; the API limits bytes. Checked on every decode (ingest and flusher).
        for name, check in AUDIT_FIELD_CHECKS.items():
            problem = check(getattr(self, name))
            if problem:
                raise ValueError(f"`{name}` {problem}")


class AuditEventBatch(Struct, forbid_unknown_fields=True):
    events: Annotated[list[AuditEvent], Meta(min_length=1, max_length=MAX_BATCH_ITEMS)]


def message_problem(value: str | None) -> str | None:
    if value is not None and len(value) * 4 > MAX_MESSAGE_BYTES and len(value.encode()) > MAX_MESSAGE_BYTES:
        return f"is longer than {MAX_MESSAGE_BYTES} bytes in UTF-8"
    return None


def details_problem(value: dict[str, Any] | None) -> str | None:
    if value is None:
        return None
    if len(_JSON_ENCODER.encode(value)) > MAX_DETAILS_BYTES:
        return f"is longer than {MAX_DETAILS_BYTES} bytes as JSON"
    return json_problem(value)


def occurred_problem(value: datetime | None) -> str | None:
    if value is not None and not MIN_OCCURRED_US <= to_us(value) < MAX_OCCURRED_US:
        return "must lie between 1700-01-01T00:00:00Z and 2240-01-01T00:00:00Z"
    return None


AUDIT_FIELD_CHECKS: dict[str, Callable[[Any], str | None]] = {"message": message_problem, "details": details_problem, "occurred_at": occurred_problem}


def complete(events: Sequence[AuditEvent], received_at_us: int) -> None:
    """What ingest fills in before spooling: an id where none was sent, and
    the acceptance time where no occurred_at was sent."""
    when = None
    for event in events:
        if event.event_id is None:
            event.event_id = str(uuid.uuid4())
        if event.occurred_at is None:
            event.occurred_at = when = when or from_us(received_at_us)


class EventsAccepted(Struct):
    """202 to an event batch: durable in the spool; ids in batch order."""
    status: Literal["accepted"]
    count: int
    event_ids: list[str]


class StoredEvent(Struct):
    """An event as the reads answer it: every field present, null when absent."""
    event_id: str
    occurred_at: IsoTime
    actor_id: str
    actor_type: str | None
    action: str
    resource_type: str
    resource_id: str | None
    outcome: str
    ip: str | None
    user_agent: str | None
    request_id: str | None
    message: str | None
    details: JsonDocument  # a JSON object or null; the service sends the stored text on as it is


EVENT_FIELDS = tuple(StoredEvent.__struct_fields__)  # the order of API.md, and of the CSV columns


class EventPage(Struct):
    items: list[StoredEvent]
    next_cursor: str | None


class VerifyResult(Struct):
    status: Literal["ok", "broken"]
    checked: int
    first_broken_event_id: str | None
    detail: str | None = None
