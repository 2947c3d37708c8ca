"""Query-string validation for the read API. Every bad parameter is named in
one 422 with API.md's error shape. Datetimes accept ISO 8601 with Z, with an
offset, or a date alone; a date alone as `to_date` includes that whole day.

Cursors are opaque to clients: base64url of [sort key of the last row, filter
fingerprint, page number, total]. The fingerprint ties a cursor to the list
and filters that issued it; `total` is the count taken on the walk's first
page, so later pages cost one index range and no COUNT."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from datetime import datetime

import msgspec
from msgspec import Struct
from starlette.datastructures import QueryParams

from core.errors import FieldError, Invalid
from core.times import db_text, to_us
from plugins.reader import Page, PageRequest, SessionFilter, TaskFilter
from query.views import SESSION_STATUSES, TASK_STATUSES

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_PAGE = 10_000_000
_DAY_US = 86_400_000_000
_MIN_US = to_us(datetime(1, 1, 2))
_MAX_US = to_us(datetime(9999, 12, 31, 23, 59, 59, 999999))
_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")
# '+08:00' sent unencoded in a query string arrives as ' 08:00'.
_SPACE_OFFSET = re.compile(r"(T.*) (\d{2}(:?\d{2})?)$")


class InvalidParams(Invalid):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(errors, "Invalid query parameters: fix every field listed in errors.")


class Cursor(Struct, array_like=True):
    key: list[str | int]
    fingerprint: str
    page: int
    total: int


_CURSOR = msgspec.json.Decoder(Cursor)
_ENCODER = msgspec.json.Encoder()


class ListQuery(Struct, frozen=True):
    page: int
    page_size: int
    fingerprint: str
    cursor: Cursor | None = None

    @property
    def number(self) -> int:
        return self.cursor.page if self.cursor else self.page

    def request(self) -> PageRequest:
        if self.cursor:
            return PageRequest(limit=self.page_size, after=tuple(self.cursor.key))
        return PageRequest(limit=self.page_size, offset=(self.page - 1) * self.page_size)

    def next_cursor(self, page: Page, total: int) -> str | None:
        if not page.has_more or page.last_key is None:
            return None
        cursor = Cursor(list(page.last_key), self.fingerprint, self.number + 1, total)
        return base64.urlsafe_b64encode(_ENCODER.encode(cursor)).rstrip(b"=").decode()


class ParamReader:
    """Reads parameters one by one, collecting every error before raising."""

    def __init__(self, params: QueryParams) -> None:
        self.params = params
        self.errors: list[FieldError] = []

    def get(self, name: str) -> str | None:
        values = self.params.getlist(name)
        if len(values) > 1:
            self.fail(name, "must be given at most once")
            return None
        value = values[0] if values else None
        return value if value else None  # an empty parameter means no filter

    def fail(self, name: str, message: str) -> None:
        self.errors.append(FieldError(name, message))

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        text = self.get(name)
        if text is None:
            return default
        # ASCII digits only, nothing around them: str.strip() and \d accept characters int() refuses.
        if not re.fullmatch(r"[+-]?[0-9]{1,20}", text) or not low <= int(text) <= high:
            self.fail(name, f"must be an integer from {low} to {high}")
            return default
        return int(text)

    def choice(self, name: str, choices: tuple[str, ...], default: str | None = None) -> str | None:
        text = self.get(name)
        if text is not None and text not in choices:
            self.fail(name, f"must be one of: {', '.join(choices)}")
            return default
        return default if text is None else text

    def text(self, name: str, max_length: int) -> str | None:
        text = self.get(name)
        if text is not None and len(text) > max_length:
            self.fail(name, f"must be at most {max_length} characters")
        return text

    def time(self, name: str, is_upper: bool) -> str | None:
        """The bound as storage text; an upper bound is exclusive."""
        text = self.get(name)
        if text is None:
            return None
        text = _SPACE_OFFSET.sub(r"\1+\2", text.strip())
        try:
            us = to_us(datetime.fromisoformat(text))
        except (ValueError, OverflowError):
            self.fail(name, "must be an ISO 8601 date or datetime, e.g. 2025-09-30 or 2025-09-30T10:15:30Z")
            return None
        if is_upper:
            us += _DAY_US if _DATE_ONLY.fullmatch(text) else 1
        return db_text(min(max(us, _MIN_US), _MAX_US))

    def list_query(self, kind: str, flt: Struct, key_length: int) -> ListQuery:
        page = self.integer("page", 1, 1, MAX_PAGE)
        page_size = self.integer("page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
        fingerprint = _fingerprint(kind, flt)
        cursor = self._cursor(fingerprint, key_length)
        self.done()
        return ListQuery(page, page_size, fingerprint, cursor)

    def _cursor(self, fingerprint: str, key_length: int) -> Cursor | None:
        text = self.get("cursor")
        if text is None:
            return None
        try:
            cursor = _CURSOR.decode(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (binascii.Error, ValueError, msgspec.DecodeError):
            self.fail("cursor", "is not a cursor this service issued")
            return None
        if cursor.fingerprint != fingerprint or len(cursor.key) != key_length:
            self.fail("cursor", "was issued for another list or other filters; start again without it")
            return None
        return cursor

    def keyset_cursor(self, kind: str, flt: Struct, key_length: int) -> tuple[str, ...] | None:
        """For lists paged by cursor alone (no page numbers, no totals): the key to continue after."""
        cursor = self._cursor(_fingerprint(kind, flt), key_length)
        return None if cursor is None else tuple(str(k) for k in cursor.key)

    @staticmethod
    def issue_cursor(kind: str, flt: Struct, key: list[str | int]) -> str:
        cursor = Cursor(key, _fingerprint(kind, flt), 0, 0)
        return base64.urlsafe_b64encode(_ENCODER.encode(cursor)).rstrip(b"=").decode()

    def done(self) -> None:
        if self.errors:
            raise InvalidParams(self.errors)


def _fingerprint(kind: str, flt: Struct) -> str:
    return hashlib.blake2b(kind.encode() + _ENCODER.encode(flt), digest_size=8).hexdigest()


def session_list(params: QueryParams) -> tuple[SessionFilter, ListQuery]:
    r = ParamReader(params)
    status = r.choice("status", SESSION_STATUSES)
    flt = SessionFilter(
        statuses=(status,) if status else (),
        created_from=r.time("from_date", is_upper=False),
        created_before=r.time("to_date", is_upper=True),
        sort_by=r.choice("sort_by", ("created_at", "updated_at"), "created_at"),  # type: ignore[arg-type]
        descending=r.choice("order", ("asc", "desc"), "desc") == "desc")
    return flt, r.list_query("sessions", flt, len(flt.order))


def session_tasks(params: QueryParams, session_id: str) -> tuple[TaskFilter, ListQuery]:
    r = ParamReader(params)
    flt = TaskFilter(session_id=session_id, status=r.choice("status", TASK_STATUSES),
                     sheet_name=r.text("sheet_name", 255), by_layout=True)
    return flt, r.list_query("session_tasks", flt, len(flt.order))


def task_list(params: QueryParams) -> tuple[TaskFilter, ListQuery]:
    r = ParamReader(params)
    flt = TaskFilter(session_id=r.text("session_id", 36), status=r.choice("status", TASK_STATUSES),
                     created_from=r.time("from_date", is_upper=False),
                     created_before=r.time("to_date", is_upper=True))
    return flt, r.list_query("tasks", flt, len(flt.order))
