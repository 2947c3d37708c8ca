"""The validate-only ceiling for bench_write.py: the ingest worker's request
path without the spool.

Same server (granian, ASGI, same flags as the supervisor uses), same
framework (Starlette), same body reading (core.http.read_body), same
validation (ingest.validation.validate_batch, i.e. the record kind's decoder,
core.kinds), same 202 answer; the only thing missing is the append to
the spool and the wait for its commit. Nothing here is part of the service.

    python -m granian --interface asgi --factory --no-ws --loop uvloop --workers 2 \
        --host 127.0.0.1 --port 8001 loadtests.null_app:create_app
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core.http import json_response
from core.kinds import KINDS, RecordKind
from core.times import iso_z, now_us
from ingest.errors import EXCEPTION_HANDLERS
from core.http import read_body
from ingest.validation import validate_batch

MAX_BODY_BYTES = 8 * 1024 * 1024


def _accept(kind: RecordKind) -> Callable[[Request], Awaitable[Response]]:
    async def accept(request: Request) -> Response:
        body = await read_body(request, MAX_BODY_BYTES)
        count = len(validate_batch(kind, body))
        return json_response({"status": "accepted", "count": count, "timestamp": iso_z(now_us())}, 202)
    return accept


async def health(request: Request) -> Response:
    return json_response({"status": "healthy", "buffer": {"total_count": 0}})


def create_app() -> Starlette:
    return Starlette(routes=[
        *(Route(kind.path, _accept(kind), methods=["POST"]) for kind in KINDS),
        Route("/health", health, methods=["GET"]),
    ], exception_handlers=EXCEPTION_HANDLERS)
