"""The query ASGI app. For now it answers /health; the read API lands with
the read-side issue."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TypedDict

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core import VERSION
from core.http import COMMON_HANDLERS, json_response, unavailable
from core.logging import setup_logging
from core.settings import Settings, load_settings
from core.times import now_us
from query.management import management_routes
from wal import Spool, SpoolError
from wal.health import health_report


class State(TypedDict):
    spool: Spool
    started_us: int


async def health(request: Request) -> Response:
    status, body = health_report(request.state.spool.stats(), request.state.started_us, VERSION)
    return json_response(body, status)


def create_app(settings: Settings | None = None) -> Starlette:
    if settings is None:
        settings = load_settings()
        setup_logging(settings.service.log_level)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        spool = Spool.open(settings.spool)
        try:
            yield State(spool=spool, started_us=now_us())
        finally:
            spool.close()

    routes = [Route("/health", health, methods=["GET"]), *management_routes(settings)]
    return Starlette(routes=routes, exception_handlers={**COMMON_HANDLERS, SpoolError: unavailable},
                     lifespan=lifespan)
