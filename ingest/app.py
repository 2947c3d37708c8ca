"""The ingest ASGI app. Granian calls create_app() as a factory in every
worker process; the spool is opened in the lifespan, after the fork."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TypedDict

from starlette.applications import Starlette
from starlette.middleware import Middleware

from core import metrics
from core.logging import setup_logging
from core.auth import ApiKeyAuth, ScopedRoute
from core.kinds import KINDS
from core.middleware import RequestContext
from core.settings import Settings, load_settings
from core.times import now_us
from ingest import routes
from ingest.errors import EXCEPTION_HANDLERS
from ingest.proxy import Port8001, QueryProxy
from ingest.writer import SpoolWriter
from wal import Spool
from wal.audit_trail import AuditTrail


class State(TypedDict):
    writer: SpoolWriter
    spool: Spool
    max_body_bytes: int
    body_timeout: float
    flush_timeout: float
    started_us: int
    stall_after: float
    spool_path: str
    audit_trail: AuditTrail


ROUTES = [
    *(ScopedRoute(kind.path, routes.batch_endpoint(kind), methods=["POST"], access="write") for kind in KINDS),
    ScopedRoute("/api/v1/translation/flush", routes.flush, methods=["POST"], access="write"),
    ScopedRoute("/health", routes.health, methods=["GET"], access="open"),
    *metrics.METRICS_ROUTES,
]


def create_app(settings: Settings | None = None) -> Port8001:
    if settings is None:
        settings = load_settings()
        setup_logging(settings.service.log_level)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        writer = SpoolWriter(settings.spool)
        writer.start()
        spool = Spool.open(settings.spool)
        trail = AuditTrail(settings.spool, settings.audit)
        trail.start()
        try:
            yield State(writer=writer, spool=spool, max_body_bytes=settings.ingest.max_body_bytes,
                        body_timeout=settings.ingest.body_timeout,
                        flush_timeout=settings.ingest.flush_timeout, started_us=now_us(),
                        stall_after=settings.flush.stall_after, spool_path=settings.spool.path,
                        audit_trail=trail)
        finally:
            trail.stop()
            writer.stop()
            spool.close()

    metrics.mark_up("ingest")
    app = Starlette(routes=ROUTES, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan,
                    middleware=[Middleware(RequestContext, role="ingest", is_access_log=settings.service.access_log),
                                Middleware(ApiKeyAuth, settings=settings.auth, routes=ROUTES)])
    own_paths = [route.path for route in ROUTES]
    return Port8001(app, own_paths, QueryProxy(settings.query, settings.ingest.max_body_bytes))
