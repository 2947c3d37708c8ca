"""What both clients share and neither does I/O in: a request described as a
Call, the typed decoding of its answer, the retry policy, and the batch
bodies of the writer. client.py (threads) and aio.py (asyncio) only execute
Calls, so every method exists once here and behaves the same in both."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import msgspec

from persistence_client.errors import api_error

T = TypeVar("T")
API = "/api/v1"
# What a retry waits for: 408, 429 and every 5xx may succeed later; the rest will not.
RETRY_STATUSES = frozenset({408, 429, *range(500, 600)})

_ENCODER = msgspec.json.Encoder()


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer."""
    method: str
    path: str
    answer: type[T] | None = None  # decode the JSON answer into this; None: the answer is not JSON
    params: Mapping[str, str] | None = None
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    ok: frozenset[int] = frozenset({200, 201, 202})
    by_status: Mapping[int, type] | None = None  # another answer type for some statuses (202 Queued)

    def decode(self, status: int, content: bytes, headers: Any) -> T:
        if status not in self.ok:
            raise api_error(status, content, headers)
        answer = self.by_status.get(status, self.answer) if self.by_status else self.answer
        if answer is None:
            return None  # type: ignore[return-value]  # Call[None]
        return msgspec.json.decode(content, type=answer)  # type: ignore[no-any-return]


def call(method: str, path: str, answer: type[T] | None = None, *, params: Mapping[str, Any] | None = None,
         json: Any = None, ok: Iterable[int] = (200, 201, 202)) -> Call[T]:
    """A Call with JSON in, JSON out: params without their None values, times as ISO 8601."""
    body = None if json is None else _ENCODER.encode(json)
    headers = {"content-type": "application/json"} if body is not None else {}
    return Call(method, API + path, answer, query(params), body, headers, frozenset(ok))


def query(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    out: dict[str, str] = {}
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        out[name] = str(value)
    return out or None


@dataclass
class Backoff:
    """Exponential backoff with full jitter; a Retry-After from the service is
    a floor (it knows how long its backlog takes to drain)."""
    initial: float = 0.05
    maximum: float = 5.0
    multiplier: float = 2.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        ceiling = min(self.maximum, self.initial * self.multiplier ** attempt)
        wait = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, 60.0))
        return wait


# -- the writer's batches --------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    """A kind of record the writer batches: where it goes and under which key."""
    code: int  # stored in the disk buffer
    path: str
    key: str  # "tasks" in {"tasks": [...]}
    key_field: str | None  # the record's primary key, when a later write replaces an earlier one


SESSIONS = Kind(1, API + "/translation/sessions/batch", "sessions", "session_id")
TASKS = Kind(2, API + "/translation/tasks/batch", "tasks", "task_id")
EVENTS = Kind(3, API + "/audit/events/batch", "events", None)  # appended, never replaced
KINDS = {kind.code: kind for kind in (SESSIONS, TASKS, EVENTS)}


def batch_body(kind: Kind, payloads: list[bytes]) -> bytes:
    """{"tasks": [...]} from records already encoded at put() (no second encode)."""
    return b'{"%s":[%s]}' % (kind.key.encode(), b",".join(payloads))


def rejected_items(kind: Kind, errors: Iterable[Any], count: int) -> set[int] | None:
    """The indexes a 422 names (`tasks[3].status` -> 3); None when it names no
    item, so the whole batch is at fault."""
    prefix = kind.key + "["
    bad: set[int] = set()
    for problem in errors:
        name = problem.field
        if not name.startswith(prefix):
            return None
        digits = name[len(prefix):].split("]", 1)[0]
        if not digits.isdigit() or int(digits) >= count:
            return None
        bad.add(int(digits))
    return bad or None

