"""The SQL both readers share, built by `ReadSql` with each backend's
placeholder, and `SqlReader`: the reads both backends run the same way.
Each backend supplies how a statement is run and its own statements
(statistics, index creation, the restore walk)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


from plugins.tables import SESSION_TABLE, TASK_TABLE, Table
from plugins.reader import OPEN_STATUSES, Key, Page, PageRequest, SessionFilter, TaskFilter


class SqlReader:
    """session, task, the lists and their counts, for a subclass that sets
    self._sql and runs statements with _fetch (any statement) and
    _fetch_rows (statements that select whole records; by default the same)."""

    _sql: ReadSql

    def _fetch(self, sql: str, params: list[Any]) -> list[tuple]:
        raise NotImplementedError

    def _fetch_rows(self, sql: str, params: list[Any]) -> list[tuple]:
        return self._fetch(sql, params)

    def session(self, session_id: str) -> tuple | None:
        rows = self._fetch_rows(self._sql.session_by_id, [session_id])
        return rows[0] if rows else None

    def task(self, task_id: str) -> tuple | None:
        rows = self._fetch_rows(self._sql.task_by_id, [task_id])
        return rows[0] if rows else None

    def sessions(self, flt: SessionFilter, page: PageRequest) -> Page:
        rows = self._fetch_rows(*self._sql.sessions(flt, page))
        return make_page(rows, page.limit, key_getter(SESSION_TABLE.columns, flt.order))

    def count_sessions(self, flt: SessionFilter) -> int:
        return int(self._fetch(*self._sql.count_sessions(flt))[0][0])

    def tasks(self, flt: TaskFilter, page: PageRequest) -> Page:
        rows = self._fetch_rows(*self._sql.tasks(flt, page))
        return make_page(rows, page.limit, key_getter(TASK_TABLE.columns, flt.order))

    def count_tasks(self, flt: TaskFilter) -> int:
        return int(self._fetch(*self._sql.count_tasks(flt))[0][0])


def _after(columns: Sequence[str], descending: bool, ph: str, row_values: bool) -> str:
    """(c1, ..., cn) > (v1, ..., vn), in the form each planner turns into one
    index range that starts at the key (not at the start of its c1 group):
    SQLite takes row values; MariaDB takes the expanded AND/OR form."""
    op = "<" if descending else ">"
    if row_values:
        head = ", ".join(columns[:-1]) or columns[0]
        marks = ", ".join([ph] * max(1, len(columns) - 1))
        return f"({head}) {op}= ({marks}) AND ({', '.join(columns)}) {op} ({', '.join([ph] * len(columns))})"

    def strictly(cols: Sequence[str]) -> str:
        if len(cols) == 1:
            return f"{cols[0]} {op} {ph}"
        return f"({cols[0]} {op} {ph} OR ({cols[0]} = {ph} AND {strictly(cols[1:])}))"

    return f"{columns[0]} {op}= {ph} AND {strictly(columns)}"


def _after_params(key: Key, row_values: bool) -> list[str | int]:
    if row_values:
        return [*(key[:-1] or key[:1]), *key]
    params: list[str | int] = [key[0]]
    for value in key[:-1]:
        params += [value, value]
    return [*params, key[-1]]


SESSIONS = SESSION_TABLE
TASKS = TASK_TABLE


class ReadSql:
    """Builds the statements both backends share; `ph` is the driver's placeholder.

    With deferred_join, an OFFSET page first selects only primary keys (read
    from the index alone) and then joins the rows, so the skipped rows are
    never read whole. First pages and keyset pages read their rows directly:
    on MariaDB 10.11 the join only added a temporary table there.

    With json_rows, a row comes back as one JSON array (`JSON_ARRAY(...)`,
    decoded by the reader): pymysql then parses one column per row instead of
    13 or 18. loadtests/read_cost.py measures each choice against its
    alternative ("statement forms")."""

    def __init__(self, ph: str, row_values: bool = False, deferred_join: bool = False,
                 json_rows: bool = False) -> None:
        self.ph = ph
        self.row_values = row_values
        self.deferred_join = deferred_join
        self.json_rows = json_rows
        self.session_by_id = (f"SELECT {SESSIONS.select_list(as_json=json_rows)} FROM {SESSIONS.name}"
                              f" WHERE session_id = {ph}")
        self.task_by_id = f"SELECT {TASKS.select_list(as_json=json_rows)} FROM {TASKS.name} WHERE task_id = {ph}"

    def sessions(self, flt: SessionFilter, page: PageRequest) -> tuple[str, list]:
        where, params = self._session_where(flt)
        return self._page(SESSIONS, where, params, flt.order, flt.descending, page)

    def count_sessions(self, flt: SessionFilter) -> tuple[str, list]:
        where, params = self._session_where(flt)
        return f"SELECT COUNT(*) FROM translation_sessions{_where(where)}", params

    def tasks(self, flt: TaskFilter, page: PageRequest) -> tuple[str, list]:
        where, params = self._task_where(flt)
        return self._page(TASKS, where, params, flt.order, flt.descending, page)

    def count_tasks(self, flt: TaskFilter) -> tuple[str, list]:
        where, params = self._task_where(flt)
        return f"SELECT COUNT(*) FROM translation_tasks{_where(where)}", params

    def open_tasks(self, session_id: str, status: str, after: str | int | None, limit: int,
                   tiebreak: str, extra: str = "") -> tuple[str, list]:
        """One open status at a time, by tiebreak: an index range on
        (session_id, status, tiebreak) with no sort. `extra` is appended to
        the selected columns (SQLite: ", rowid")."""
        where, params = [f"session_id = {self.ph}", f"status = {self.ph}"], [session_id, status]
        key = None if after is None else (after,)
        return self._page(TASKS, where, params, (tiebreak,), False, PageRequest(limit=limit, after=key), extra)

    def _session_where(self, flt: SessionFilter) -> tuple[list[str], list]:
        where, params = self._created(flt.created_from, flt.created_before)
        if flt.statuses:
            where.append(f"status IN ({', '.join([self.ph] * len(flt.statuses))})")
            params += flt.statuses
        return where, params

    def _task_where(self, flt: TaskFilter) -> tuple[list[str], list]:
        where, params = self._created(flt.created_from, flt.created_before)
        for column in ("session_id", "status", "sheet_name"):
            value = getattr(flt, column)
            if value is not None:
                where.append(f"{column} = {self.ph}")
                params.append(value)
        return where, params

    def _created(self, start: str | None, end: str | None) -> tuple[list[str], list]:
        where, params = [], []
        if start is not None:
            where.append(f"created_at >= {self.ph}")
            params.append(start)
        if end is not None:
            where.append(f"created_at < {self.ph}")
            params.append(end)
        return where, params

    def _page(self, table: Table, where: list[str], params: list, order: Sequence[str],
              descending: bool, page: PageRequest, extra: str = "") -> tuple[str, list]:
        where, params = list(where), list(params)
        if page.after is not None:
            where.append(_after(order, descending, self.ph, self.row_values))
            params += _after_params(page.after, self.row_values)
        params.append(page.limit + 1)  # one more tells whether another page follows
        tail = f" LIMIT {self.ph}"
        if page.after is None and page.offset:
            tail += f" OFFSET {self.ph}"
            params.append(page.offset)
        if not (self.deferred_join and page.after is None and page.offset):
            select = f"SELECT {table.select_list(as_json=self.json_rows)}{extra} FROM {table.name}"
            return f"{select}{_where(where)}{_order_by(order, descending)}{tail}", params
        keys = (f"SELECT {table.key} FROM {table.name}{_where(where)}"
                f"{_order_by(order, descending)}{tail}")
        columns = table.select_list("t.", self.json_rows) + extra
        return (f"SELECT {columns} FROM ({keys}) k JOIN {table.name} t ON t.{table.key} = k.{table.key}"
                f"{_order_by(order, descending, 't.')}"), params


def _order_by(order: Sequence[str], descending: bool, prefix: str = "") -> str:
    direction = " DESC" if descending else ""
    return f" ORDER BY {', '.join(prefix + c + direction for c in order)}"


def _where(conditions: list[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


def make_page(rows: list[tuple], limit: int, key_of: Callable[[tuple], Key]) -> Page:
    """A Page from up to limit + 1 fetched rows."""
    has_more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows=rows, has_more=has_more, last_key=key_of(rows[-1]) if rows else None)


def open_walk_start(after: Key | None) -> tuple[str, str | int | None]:
    """(status, last tiebreak seen in it) from a restore walk's last_key."""
    if not after:
        return OPEN_STATUSES[0], None
    return str(after[0]), after[1] if len(after) > 1 else None


def open_walk_page(page: Page, status: str) -> Page:
    """The restore walk goes through OPEN_STATUSES in turn: when one status is
    done, the page says so and where the next status starts."""
    if page.has_more or status == OPEN_STATUSES[-1]:
        return page
    next_status = OPEN_STATUSES[OPEN_STATUSES.index(status) + 1]
    return Page(rows=page.rows, has_more=True, last_key=(next_status,))


def key_getter(columns: Sequence[str], order: Sequence[str]) -> Callable[[tuple], Key]:
    positions = [columns.index(c) for c in order]
    return lambda row: tuple(row[i] for i in positions)
