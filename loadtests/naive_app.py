"""The naive write-through service for bench_sustained.py: what the
persistence service is compared with.

Each POST of a session or task batch is decoded and validated as ingest does
(core.http.read_body, ingest.validation.validate_batch: the record kind's
msgspec structs), turned into rows by plugins.tables (the same to_row, node
id 0 appended as the sink does) and written straight to MariaDB with one
pymysql executemany() of plugins.mysql's own versioned upsert, then COMMIT;
only then is 202 sent. No spool, no batching across requests.

The blocking write runs in Starlette's thread pool: every thread keeps its
own connection, so the requests of one worker write concurrently (as a
straightforward write-through service would), and the event loop keeps
reading the next bodies meanwhile.

    NAIVE_SINK_URL=mysql://root@127.0.0.1:3306/naive python -m granian --interface asgi --factory \
        --no-ws --loop uvloop --workers 2 --host 127.0.0.1 --port 8001 loadtests.naive_app:create_app

The database and its tables must exist (bench_sustained.py migrates them with plugins.mysql first).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import pymysql
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core.http import json_response, read_body
from core.kinds import SESSIONS, TASKS, RecordKind
from core.settings import SinkSettings
from core.times import iso_z, now_us
from ingest.errors import EXCEPTION_HANDLERS
from ingest.validation import validate_batch
from loadtests.direct_load import executemany_sql
from plugins.mysql import ISOLATION, UPSERTS, connect_params
from plugins.tables import TABLE_OF

URL_ENV = "NAIVE_SINK_URL"
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_STATEMENT_BYTES = 60 * 1024 * 1024  # one INSERT per request (max_allowed_packet is 64M)
RETRIES = 3  # a deadlock or lock wait timeout is retried, as any careful client of InnoDB does
RETRY_CODES = {1205, 1213}
NODE = (0,)  # sink.node_id 0, appended to each upserted row (TASK_TABLE.write_columns)


class Writer:
    """One pymysql connection per thread, each set up as the sink sets up its own."""

    def __init__(self, url: str) -> None:
        self._target, self._params = connect_params(SinkSettings(url=url))
        self._local = threading.local()

    def _conn(self) -> pymysql.connections.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._target.connect(**self._params)
            with conn.cursor() as cur:
                cur.execute(ISOLATION)
        return conn

    def write(self, sql: str, rows: list[tuple]) -> None:
        """executemany (pymysql makes it one multi-row INSERT) + COMMIT."""
        for attempt in range(RETRIES):
            conn = self._conn()
            try:
                with conn.cursor() as cur:
                    cur.max_stmt_length = MAX_STATEMENT_BYTES
                    cur.executemany(sql, rows)
                conn.commit()
                return
            except pymysql.err.OperationalError as exc:
                conn.rollback()
                if exc.args[0] not in RETRY_CODES or attempt == RETRIES - 1:
                    raise


def _rows(kind: RecordKind, records: Any) -> list[tuple]:
    """The rows the sink would write: the version is the record's updated_at,
    else the time of acceptance (as ingest stamps it)."""
    table = TABLE_OF[kind.name]
    received = now_us()
    return [table.to_row(r, kind.version(r, received), received) + NODE for r in records]


def _accept(kind: RecordKind, writer: Writer) -> Callable[[Request], Any]:
    table = TABLE_OF[kind.name]
    sql = executemany_sql(UPSERTS[table.name], len(table.write_columns))

    async def accept(request: Request) -> Response:
        body = await read_body(request, MAX_BODY_BYTES)
        records = validate_batch(kind, body)
        # In Starlette's thread pool: the blocking write must not stall the event loop.
        await run_in_threadpool(writer.write, sql, _rows(kind, records))
        return json_response({"status": "accepted", "count": len(records), "timestamp": iso_z(now_us())}, 202)
    return accept


async def health(request: Request) -> Response:
    return json_response({"status": "healthy"})


def create_app() -> Starlette:
    writer = Writer(os.environ[URL_ENV])
    return Starlette(routes=[
        *(Route(kind.path, _accept(kind, writer), methods=["POST"]) for kind in (SESSIONS, TASKS)),
        Route("/health", health, methods=["GET"]),
    ], exception_handlers=EXCEPTION_HANDLERS)
