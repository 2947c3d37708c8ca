"""The query ASGI app (port 8002): reads, recovery, stats and /health.

At start it creates the sink's tables and the read indexes in the
background, retrying while the database is away: the app answers at once
(reads meanwhile may be 503) and never crash-loops on a database outage."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, TypedDict

import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from core import VERSION, metrics
from core.http import COMMON_HANDLERS, error_response, json_response, unavailable
from core.logging import setup_logging
from core.auth import ApiKeyAuth, ScopedRoute
from core.middleware import RequestContext
from core.settings import Settings, SinkSettings, load_settings
from core.times import now_us
from plugins import SinkError, open_sink
from plugins.reader import READ_CONNECTIONS, Reader, ReadError, open_reader
from audit import routes as audit_routes
from audit.housekeeping import housekeeping as audit_housekeeping
from archive.reads import ArchiveReads
from archive.reads import housekeeping as archive_housekeeping
from archive.routes import archive_routes
from backup import routes as backup_routes
from backup.housekeeping import housekeeping as backup_housekeeping
from backup.service import Backups
from files import routes as file_routes
from files.housekeeping import housekeeping
from files.service import FileService, StoreUnavailable
from users import routes as user_routes
from users.housekeeping import housekeeping as user_housekeeping
from users.service import UserService
from plugins.audit import open_audit_log
from plugins.audit.store import AuditLog, AuditUnavailable
from plugins.blobs import open_blob_store
from plugins.file_catalog import CatalogError, FileCatalog
from query import routes
from query.management import management_routes
from query.count_cache import CountCache
from query.read_threads import ReadThreads
from query.stats_cache import StatsCache
from query.system import system_routes
from wal import Spool, SpoolError
from wal.audit_trail import AuditTrail
from core.health import health_report, stores_health

logger = logging.getLogger(__name__)
PREPARE_RETRY_S = 2.0
API = "/api/v1/translation"


class State(TypedDict):
    spool: Spool
    started_us: int
    stall_after: float
    reader: Reader
    read_threads: ReadThreads
    stats_cache: StatsCache
    counts: CountCache
    files: FileService
    users: UserService
    audit_log: AuditLog
    audit_trail: AuditTrail
    spool_path: str
    backups: Backups
    archive: ArchiveReads


async def health(request: Request) -> Response:
    status, body = health_report(request.state.spool.stats(), request.state.started_us, VERSION,
                                 request.state.stall_after, **stores_health(request.state.spool_path))
    return json_response(body, status)


async def _unavailable(request: Request, exc: Exception) -> Response:
    logger.warning("read failed on %s: %s", request.url.path, exc)
    return error_response(503, "The database cannot be read now; retry later.",
                          "DATABASE_UNAVAILABLE", headers={"Retry-After": "5"})


EXCEPTION_HANDLERS: dict[Any, Any] = {**COMMON_HANDLERS, ReadError: _unavailable, CatalogError: _unavailable,
                                      AuditUnavailable: _unavailable,
                                      SpoolError: unavailable, StoreUnavailable: file_routes.store_unavailable,
                                      **user_routes.EXCEPTION_HANDLERS}

ROUTES = [
    ScopedRoute("/health", health, methods=["GET"], access="open"),
    ScopedRoute(f"{API}/sessions", routes.list_sessions, methods=["GET"], access="read"),
    ScopedRoute(f"{API}/sessions/{{session_id}}", routes.get_session, methods=["GET"], access="read"),
    ScopedRoute(f"{API}/sessions/{{session_id}}/tasks", routes.list_session_tasks, methods=["GET"], access="read"),
    ScopedRoute(f"{API}/tasks", routes.list_tasks, methods=["GET"], access="read"),
    ScopedRoute(f"{API}/tasks/{{task_id}}", routes.get_task, methods=["GET"], access="read"),
    ScopedRoute(f"{API}/recovery/incomplete-sessions", routes.incomplete_sessions, methods=["GET"], access="read"),
    ScopedRoute(f"{API}/recovery/restore/{{session_id}}", routes.restore, methods=["POST"], access="read"),
    ScopedRoute(f"{API}/recovery/status", routes.recovery_status, methods=["GET"], access="read"),
    ScopedRoute(f"{API}/stats", routes.stats, methods=["GET"], access="read"),
]


def _prepare_once(settings: SinkSettings, reader: Reader) -> None:
    sink = open_sink(settings)
    try:
        sink.migrate()  # the flusher does it too; whichever runs first makes the tables
    finally:
        sink.close()
    reader.ensure_indexes()


async def _prepare(settings: SinkSettings, reader: Reader) -> None:
    while True:
        try:
            await anyio.to_thread.run_sync(_prepare_once, settings, reader, abandon_on_cancel=True)
            logger.info("read indexes are in place")
            return
        except Exception as exc:  # top of a retry loop: log, then try again
            logger.warning("cannot prepare the database for reads yet (%s); retrying in %.0f s",
                           exc, PREPARE_RETRY_S, exc_info=not isinstance(exc, SinkError))
            await asyncio.sleep(PREPARE_RETRY_S)


def create_app(settings: Settings | None = None) -> Starlette:
    if settings is None:
        settings = load_settings()
        setup_logging(settings.service.log_level)
    sink_settings = settings.sink

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        spool = Spool.open(settings.spool)
        reader = open_reader(sink_settings)
        preparing = asyncio.create_task(_prepare(sink_settings, reader))
        threads = ReadThreads(READ_CONNECTIONS)
        files = FileService(settings.files, open_blob_store(settings.files), FileCatalog.open(sink_settings))
        keeping = asyncio.create_task(housekeeping(files, settings.spool.path))
        users = UserService(settings)
        keeping_users = asyncio.create_task(user_housekeeping(users, settings.spool.path,
                                                              settings.user_sessions.sweep_interval))
        audit_log = open_audit_log(sink_settings)
        keeping_audit = asyncio.create_task(audit_housekeeping(audit_log, threads))
        trail = AuditTrail(settings.spool, settings.audit)
        trail.start()
        backups = Backups(settings)
        keeping_backups = asyncio.create_task(backup_housekeeping(backups))
        archive = ArchiveReads(settings)
        keeping_archive = asyncio.create_task(archive_housekeeping(archive))
        try:
            yield State(spool=spool, started_us=now_us(), stall_after=settings.flush.stall_after, reader=reader,
                        read_threads=threads, stats_cache=StatsCache(settings.query.stats_cache),
                        counts=CountCache(), files=files, users=users, audit_log=audit_log, audit_trail=trail,
                        spool_path=settings.spool.path, backups=backups, archive=archive)
        finally:
            keeping_archive.cancel()
            archive.close()
            keeping_backups.cancel()
            backups.close()
            trail.stop()
            keeping_audit.cancel()
            audit_log.close()
            keeping_users.cancel()
            users.close()
            keeping.cancel()
            files.close()
            preparing.cancel()
            threads.close()
            reader.close()
            spool.close()

    metrics.mark_up("query")
    all_routes = (ROUTES + archive_routes(settings) + file_routes.ROUTES + backup_routes.ROUTES + user_routes.ROUTES + audit_routes.ROUTES + metrics.METRICS_ROUTES
                  + management_routes(settings) + system_routes(settings))
    return Starlette(routes=all_routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan,
                     middleware=[Middleware(RequestContext, role="query", is_access_log=settings.service.access_log),
                                 Middleware(ApiKeyAuth, settings=settings.auth, routes=all_routes)])
