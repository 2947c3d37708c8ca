"""/api/v1/system/backups (admin, API.md "Backups"): start one, list them,
read one, verify one. Restore is a command only (backup/cli.py): it needs
the service stopped. Store and database work runs in worker threads."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from backup.service import BackupNotFound, BackupRunning, Backups, to_view
from core.auth import ScopedRoute
from core.errors import Conflict, NotFound
from core.http import json_response
from persistence_api.backups import BackupList, BackupStarted

BASE = "/api/v1/system/backups"


class BackupMissing(NotFound):
    error_code = "BACKUP_NOT_FOUND"

    def __init__(self, backup_id: str) -> None:
        super().__init__("Backup not found", backup_id=backup_id)


class BackupInProgress(Conflict):
    error_code = "BACKUP_RUNNING"

    def __init__(self) -> None:
        super().__init__("A backup is being made on this machine; start another once it has ended.")


def _backups(request: Request) -> Backups:
    return request.state.backups


async def create(request: Request) -> Response:
    try:
        manifest = await run_in_threadpool(_backups(request).start, "api")
    except BackupRunning:
        raise BackupInProgress() from None
    assert manifest is not None
    await request.state.audit_trail.record(request, "backup.create", "backup", manifest.backup_id)
    return json_response(BackupStarted(manifest.backup_id, manifest.status), 202)


async def list_backups(request: Request) -> Response:
    manifests = await run_in_threadpool(_backups(request).list_all)
    return json_response(BackupList([to_view(m) for m in manifests]))


async def get_backup(request: Request) -> Response:
    backup_id = request.path_params["backup_id"]
    try:
        manifest = await run_in_threadpool(_backups(request).get, backup_id)
    except BackupNotFound:
        raise BackupMissing(backup_id) from None
    return json_response(to_view(manifest))


async def verify(request: Request) -> Response:
    backup_id = request.path_params["backup_id"]
    try:
        result = await run_in_threadpool(_backups(request).verify, backup_id)
    except BackupNotFound:
        raise BackupMissing(backup_id) from None
    await request.state.audit_trail.record(request, "backup.verify", "backup", backup_id,
                                           details={"status": result.status})
    return json_response(result)


ROUTES = [
    ScopedRoute(BASE, create, methods=["POST"], access="admin"),
    ScopedRoute(BASE, list_backups, methods=["GET"], access="admin"),
    ScopedRoute(BASE + "/{backup_id}", get_backup, methods=["GET"], access="admin"),
    ScopedRoute(BASE + "/{backup_id}/verify", verify, methods=["POST"], access="admin"),
]
