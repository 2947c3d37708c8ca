"""GET /openapi.json: every endpoint of API.md as an OpenAPI 3.1 document.

Paths, methods and query parameters are described here; every request and
answer schema is generated from the msgspec types that the service decodes
with (core.records) or answers with (query.openapi_types, query.views), by
msgspec.json.schema_components, so the document cannot drift from the code's
types. Errors share one schema, ErrorBody: API.md's error shape."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from msgspec import Struct

from core import VERSION
from persistence_api.files import (
    FILENAME_PATTERN,
    CompleteRequest,
    File,
    FileDeleted,
    FileList,
    PresignedUpload,
    PresignedUrl,
    PresignRequest,
    UploadRequest,
)
from persistence_api.audit import OUTCOMES, AuditEventBatch, EventPage, EventsAccepted, StoredEvent, VerifyResult
from persistence_api.archive import ArchivedSessionList, ArchiveRun, ArchiveSummary
from persistence_api.backups import Backup, BackupList, BackupStarted, BackupVerification
from core.records import Archived, ArchiveRestored
from persistence_api.translation import Cleanup, SessionBatch, TaskBatch
from persistence_api.users import (
    ROLES,
    USER_STATUSES,
    Authenticated,
    Credentials,
    NewUserSession,
    Revoked,
    RevokedCount,
    SessionCreate,
    SessionData,
    TokenBody,
    User,
    UserCreate,
    UserDeleted,
    UserList,
    UserPatch,
    UserSession,
    UserSessionList,
    Validated,
)
from core.settings import Settings
from query import openapi_types as t
from query.management import StatusChange
from query.views import SESSION_STATUSES, TASK_STATUSES, SessionDetail, TaskView

API = "/api/v1/translation"
FILES = "/api/v1/files"
USERS = "/api/v1/users"
USER_SESSIONS = "/api/v1/user-sessions"
SYSTEM = "/api/v1/system"
AUDIT = "/api/v1/audit"
EXPORT_MEDIA = ("application/x-ndjson", "text/csv; charset=utf-8")
REF = "#/components/schemas/{name}"
TEXT = "text/plain"
HTML = "text/html"
JSON_OBJECT = "object"  # an answer whose schema is any JSON object (the OpenAPI document itself)
_PATH_PARAM = re.compile(r"{(\w+)}")
_PATH_PARAM_LENGTH = {"session_id": 36, "task_id": 64, "file_id": 36, "user_id": 36, "event_id": 64,
                      "backup_id": 23}
BINARY = "application/octet-stream"

Answer = type[Struct] | str | tuple[str, ...]  # a Struct, or the media types of a body that is not JSON


class Param(Struct, frozen=True):
    name: str
    schema: dict[str, Any]
    description: str = ""


class Op(Struct, frozen=True):
    method: str
    path: str
    op_id: str
    tag: str
    summary: str
    answers: dict[int, Answer]
    body: type[Struct] | None = None
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    is_body_optional: bool = False
    is_upload: bool = False  # the body is a file: multipart/form-data or the raw bytes


def _enum(values: tuple[str, ...], description: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values), "description": description}


PAGE = Param("page", {"type": "integer", "minimum": 1, "maximum": 10_000_000, "default": 1})
PAGE_SIZE = Param("page_size", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20})
CURSOR = Param("cursor", {"type": "string"}, "opaque; the next_cursor of the previous page (same filters)")
FROM_DATE = Param("from_date", {"type": "string"}, "created_at >= this (ISO 8601 date or datetime)")
TO_DATE = Param("to_date", {"type": "string"}, "created_at before this; a date alone includes that day")
SESSION_STATUS = Param("status", _enum(SESSION_STATUSES, "only sessions in this status"))
TASK_STATUS = Param("status", _enum(TASK_STATUSES, "only tasks in this status"))
LIMIT = Param("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100})
AFTER_ID = Param("after_id", {"type": "integer", "minimum": 0, "maximum": 2**63 - 1, "default": 0},
                 "continue after this dead-letter id (next_after_id of the previous page)")

SIGNED = (Param("expires", {"type": "integer"}, "unix seconds; part of the signed URL"),
          Param("signature", {"type": "string"}, "part of the signed URL"))
FILE_FILTERS = (Param("session_id", {"type": "string", "maxLength": 36}),
                Param("owner_id", {"type": "string", "maxLength": 64}),
                Param("content_type", {"type": "string", "maxLength": 255}),
                Param("tag", {"type": "string", "maxLength": 64}),
                Param("created_from", {"type": "string"}, "created_at >= this (ISO 8601 date or datetime)"),
                Param("created_to", {"type": "string"}, "created_at before this; a date alone includes that day"),
                CURSOR, LIMIT)
UPLOAD_PARAMS = (Param("filename", {"type": "string", "maxLength": 255, "pattern": FILENAME_PATTERN},
                       "required with a raw body"),
                 Param("session_id", {"type": "string", "maxLength": 36}),
                 Param("owner_id", {"type": "string", "maxLength": 64}),
                 Param("tags", {"type": "string"}, "comma-separated"))
USER_FILTERS = (Param("status", _enum(USER_STATUSES, "only users in this status")),
                Param("role", _enum(ROLES, "only users with this role")),
                Param("q", {"type": "string", "maxLength": 254},
                      "prefix of username, email or display name, without regard to case"),
                CURSOR, LIMIT)
OCCURRED_FROM = Param("from", {"type": "string"}, "occurred_at >= this (ISO 8601 date or datetime)")
OCCURRED_TO = Param("to", {"type": "string"}, "occurred_at before this (exclusive)")
EVENT_FILTERS = (Param("actor_id", {"type": "string", "maxLength": 128}),
                 Param("action", {"type": "string", "maxLength": 64}),
                 Param("resource_type", {"type": "string", "maxLength": 64}),
                 Param("resource_id", {"type": "string", "maxLength": 255}),
                 Param("outcome", _enum(OUTCOMES, "only events with this outcome")), OCCURRED_FROM, OCCURRED_TO,
                 Param("q", {"type": "string", "maxLength": 1024},
                       "words (split on whitespace, at most 16 of at most 128 characters) that must all occur in "
                       "the message or a string value of details; every character is text, never an operator"))
RANGE_NOTE = "Range (one range) -> 206, unsatisfiable -> 416; If-None-Match with the ETag -> 304"

WRITE_ERRORS = (400, 413, 422, 429, 503)
READ_ERRORS = (422, 503)
COMMAND_ERRORS = (400, 413, 422, 503)

OPERATIONS: tuple[Op, ...] = (
    Op("post", f"{API}/sessions/batch", "postSessions", "writes", "Accept a batch of sessions (upserts)",
       {202: t.Accepted}, SessionBatch, errors=WRITE_ERRORS),
    Op("post", f"{API}/tasks/batch", "postTasks", "writes", "Accept a batch of tasks (upserts)",
       {202: t.Accepted}, TaskBatch, errors=WRITE_ERRORS),
    Op("post", f"{API}/flush", "flush", "writes", "Wait until everything acknowledged is in the database",
       {200: t.FlushResult, 503: t.FlushResult}),
    Op("get", f"{API}/sessions", "listSessions", "reads", "List sessions",
       {200: t.SessionList}, params=(SESSION_STATUS, FROM_DATE, TO_DATE, PAGE, PAGE_SIZE,
                                     Param("sort_by", _enum(("created_at", "updated_at"), "default created_at")),
                                     Param("order", _enum(("asc", "desc"), "default desc")), CURSOR),
       errors=READ_ERRORS),
    Op("get", f"{API}/sessions/{{session_id}}", "getSession", "reads", "One session with derived fields",
       {200: SessionDetail}, errors=(404, 503)),
    Op("get", f"{API}/sessions/{{session_id}}/tasks", "listSessionTasks", "reads",
       "A session's tasks by sheet_name, row_index, column_name",
       {200: t.SessionTaskList},
       params=(TASK_STATUS, Param("sheet_name", {"type": "string", "maxLength": 255}), PAGE, PAGE_SIZE, CURSOR),
       errors=(404,) + READ_ERRORS),
    Op("get", f"{API}/tasks/{{task_id}}", "getTask", "reads", "One task", {200: TaskView}, errors=(404, 503)),
    Op("get", f"{API}/tasks", "listTasks", "reads", "List tasks, newest first", {200: t.TaskList},
       params=(Param("session_id", {"type": "string", "maxLength": 36}), TASK_STATUS, FROM_DATE, TO_DATE,
               PAGE, PAGE_SIZE, CURSOR), errors=READ_ERRORS),
    Op("get", f"{API}/recovery/incomplete-sessions", "incompleteSessions", "recovery",
       "Sessions pending or processing, newest first", {200: t.IncompleteSessions}, errors=(503,)),
    Op("post", f"{API}/recovery/restore/{{session_id}}", "restoreSession", "recovery",
       "A session and its open tasks (streamed)", {200: t.Restored}, errors=(404, 503)),
    Op("get", f"{API}/recovery/status", "recoveryStatus", "recovery", "What recovery would find now",
       {200: t.RecoveryStatus}, errors=(503,)),
    Op("delete", f"{API}/sessions/{{session_id}}", "deleteSession", "management",
       "Delete a session and its tasks, ordered after every acknowledged write",
       {200: t.Deleted, 202: t.Queued}, errors=(404, 503)),
    Op("patch", f"{API}/sessions/{{session_id}}/status", "setSessionStatus", "management",
       "Change only a session's status (409 when a write with a newer version keeps the old one)",
       {200: t.StatusUpdated, 202: t.Queued}, StatusChange, errors=(404, 409) + COMMAND_ERRORS),
    Op("post", f"{API}/sessions/cleanup", "cleanupSessions", "management",
       "Delete old completed and failed sessions with their tasks", {200: t.CleanupResult, 202: t.Queued},
       Cleanup, errors=COMMAND_ERRORS, is_body_optional=True),
    Op("get", f"{API}/stats", "stats", "management", "Counts, performance and storage", {200: t.Stats},
       errors=(503,)),
    Op("get", f"{API}/archive/sessions", "listArchivedSessions", "archive",
       "Archived sessions, newest created first", {200: ArchivedSessionList},
       params=(SESSION_STATUS, FROM_DATE, TO_DATE, CURSOR, LIMIT), errors=READ_ERRORS),
    Op("get", f"{API}/archive/sessions/{{session_id}}", "getArchivedSession", "archive",
       "An archived session and all its tasks as they were stored, streamed: {session, tasks, archived_at} "
       "(404 ARCHIVED_SESSION_NOT_FOUND)", {200: JSON_OBJECT}, errors=(404, 503)),
    Op("post", f"{API}/archive/sessions/{{session_id}}/restore", "restoreArchivedSession", "archive",
       "Write an archived session and its tasks back into the hot tables, in spool order",
       {200: ArchiveRestored, 202: t.Queued}, errors=(404,) + COMMAND_ERRORS),
    Op("get", f"{API}/archive", "archiveSummary", "archive",
       "What is archived, by month, and where", {200: ArchiveSummary}, errors=(503,)),
    Op("post", f"{API}/archive/run", "runArchive", "archive",
       "Archive now the sessions finished more than after_days ago (archive.after_days, else "
       "retention.completed_days), at most archive.tasks_per_run tasks; the rest follow in further runs",
       {200: Archived, 202: t.Queued}, ArchiveRun, errors=COMMAND_ERRORS, is_body_optional=True),
    Op("post", FILES, "uploadFile", "files", "Upload one file (multipart part `file`, or the raw body with ?filename=)",
       {201: File}, params=UPLOAD_PARAMS, errors=(400, 408, 413, 422, 503), is_upload=True),
    Op("get", FILES, "listFiles", "files", "List files, newest first", {200: FileList}, params=FILE_FILTERS,
       errors=READ_ERRORS),
    Op("get", f"{FILES}/{{file_id}}", "getFile", "files", "A file's metadata", {200: File}, errors=(404, 503)),
    Op("delete", f"{FILES}/{{file_id}}", "deleteFile", "files",
       "Delete a file (its content goes once no file refers to it)", {200: FileDeleted}, errors=(404, 503)),
    Op("get", f"{FILES}/{{file_id}}/content", "downloadFile", "files", f"The content, streamed. {RANGE_NOTE}",
       {200: BINARY, 206: BINARY, 304: BINARY}, errors=(404, 416, 503)),
    Op("head", f"{FILES}/{{file_id}}/content", "headFile", "files", "The content's headers only",
       {200: BINARY, 206: BINARY, 304: BINARY}, errors=(404, 416, 503)),
    Op("get", f"{FILES}/{{file_id}}/download", "downloadSigned", "files",
       f"The content through a URL the service signed (presign, local store): no API key. {RANGE_NOTE}",
       {200: BINARY, 206: BINARY, 304: BINARY}, params=SIGNED, errors=(403, 404, 416, 503)),
    Op("head", f"{FILES}/{{file_id}}/download", "headSigned", "files", "The signed download's headers only",
       {200: BINARY, 206: BINARY, 304: BINARY}, params=SIGNED, errors=(403, 404, 416, 503)),
    Op("post", f"{FILES}/{{file_id}}/presign", "presignDownload", "files",
       "A URL that downloads the content without an API key until it expires", {200: PresignedUrl},
       PresignRequest, errors=(400, 404, 422, 503), is_body_optional=True),
    Op("post", f"{FILES}/uploads", "startUpload", "files",
       "A presigned upload: PUT the bytes to `url` with `headers`, then complete", {201: PresignedUpload},
       UploadRequest, errors=(400, 413, 422, 503)),
    Op("put", f"{FILES}/uploads/{{file_id}}/content", "putSigned", "files",
       "The bytes of a presigned upload, through a URL the service signed (local store): no API key",
       {200: JSON_OBJECT}, params=SIGNED, errors=(403, 404, 408, 413, 503), is_upload=True),
    Op("post", f"{FILES}/uploads/{{file_id}}/complete", "completeUpload", "files",
       "Check the uploaded bytes (size, and sha256 when given) and publish the file", {201: File},
       CompleteRequest, errors=(400, 404, 409, 422, 503), is_body_optional=True),
    Op("post", USERS, "createUser", "users", "Create a user (written before the answer; 409 when taken)",
       {201: User}, UserCreate, errors=(400, 409, 413, 422, 503)),
    Op("get", USERS, "listUsers", "users", "List users, newest first", {200: UserList}, params=USER_FILTERS,
       errors=READ_ERRORS),
    Op("get", f"{USERS}/{{user_id}}", "getUser", "users", "One user", {200: User}, errors=(404, 503)),
    Op("patch", f"{USERS}/{{user_id}}", "updateUser", "users",
       "Change the fields sent (metadata whole; disabling revokes the user's sessions)", {200: User}, UserPatch,
       errors=(400, 404, 409, 413, 422, 503)),
    Op("delete", f"{USERS}/{{user_id}}", "deleteUser", "users", "Delete a user and revoke all of their sessions",
       {200: UserDeleted}, errors=(404, 503)),
    Op("post", f"{USERS}/authenticate", "authenticate", "users",
       "Check a password (401 alike for unknown login, wrong password, disabled user; 429 after too many)",
       {200: Authenticated}, Credentials, errors=(400, 401, 413, 422, 429, 503)),
    Op("get", f"{USERS}/{{user_id}}/sessions", "listUserSessions", "user sessions",
       "The user's valid login sessions (never their tokens)", {200: UserSessionList}, errors=(404, 503)),
    Op("delete", f"{USERS}/{{user_id}}/sessions", "revokeUserSessions", "user sessions",
       "Revoke every login session of the user", {200: RevokedCount}, errors=(404, 503)),
    Op("post", USER_SESSIONS, "openUserSession", "user sessions",
       "Open a login session: its token is in this answer only", {201: NewUserSession}, SessionCreate,
       errors=(400, 404, 409, 413, 422, 503)),
    Op("post", f"{USER_SESSIONS}/validate", "validateUserSession", "user sessions",
       "The session and its user; slides the idle expiry (401 when unknown, revoked or expired)",
       {200: Validated}, TokenBody, errors=(400, 401, 413, 422, 503)),
    Op("patch", f"{USER_SESSIONS}/data", "setUserSessionData", "user sessions", "Replace a session's data",
       {200: UserSession}, SessionData, errors=(400, 401, 413, 422, 503)),
    Op("post", f"{USER_SESSIONS}/revoke", "revokeUserSession", "user sessions",
       "Revoke the session of this token (200 also when it was not valid)", {200: Revoked}, TokenBody,
       errors=(400, 413, 422, 503)),
    Op("delete", f"{USER_SESSIONS}/{{session_id}}", "revokeUserSessionById", "user sessions",
       "Revoke one session by its id", {200: Revoked}, errors=(404, 503)),
    Op("post", f"{AUDIT}/events/batch", "postAuditEvents", "audit",
       "Accept a batch of audit events (stored once per event_id; ids assigned where missing)",
       {202: EventsAccepted}, AuditEventBatch, errors=WRITE_ERRORS),
    Op("get", f"{AUDIT}/events", "listAuditEvents", "audit", "Search audit events, newest first",
       {200: EventPage}, params=(*EVENT_FILTERS, CURSOR, LIMIT), errors=READ_ERRORS),
    Op("get", f"{AUDIT}/events/{{event_id}}", "getAuditEvent", "audit", "One audit event", {200: StoredEvent},
       errors=(404, 503)),
    Op("get", f"{AUDIT}/export", "exportAuditEvents", "audit",
       "Every matching event, oldest first, streamed as NDJSON (or CSV with format=csv)", {200: EXPORT_MEDIA},
       params=(*EVENT_FILTERS, Param("format", _enum(("ndjson", "csv"), "default ndjson"))), errors=READ_ERRORS),
    Op("get", f"{AUDIT}/verify", "verifyAuditChain", "audit",
       "Check the hash chain over the stored events; names the first event changed behind the service's back",
       {200: VerifyResult}, params=(OCCURRED_FROM, OCCURRED_TO), errors=READ_ERRORS),
    Op("get", "/health", "health", "system", "Can the service accept writes (503 when it cannot)",
       {200: t.Health, 503: t.Health}),
    Op("get", "/metrics", "metrics", "system", "Prometheus metrics of every process", {200: TEXT}),
    Op("get", f"{SYSTEM}/metrics", "systemMetrics", "system", "The same as /metrics", {200: TEXT}),
    Op("get", f"{SYSTEM}/config", "config", "system", "The effective configuration, secrets replaced by ***",
       {200: Settings}),
    Op("get", f"{SYSTEM}/dead-letters", "listDeadLetters", "system", "Records the database refused for good",
       {200: t.DeadLetterPage}, params=(LIMIT, AFTER_ID), errors=(422, 503)),
    Op("post", f"{SYSTEM}/dead-letters/retry", "retryDeadLetters", "system",
       "Put dead letters back in the spool (in order; each keeps its version)", {200: t.RetryResult},
       t.DeadLetterSelection, errors=COMMAND_ERRORS),
    Op("post", f"{SYSTEM}/dead-letters/purge", "purgeDeadLetters", "system", "Delete dead letters",
       {200: t.PurgeResult}, t.DeadLetterSelection, errors=COMMAND_ERRORS),
    Op("delete", f"{SYSTEM}/dead-letters", "deleteDeadLetters", "system", "Delete dead letters (as /purge)",
       {200: t.PurgeResult}, t.DeadLetterSelection, errors=COMMAND_ERRORS),
    Op("post", f"{SYSTEM}/backups", "createBackup", "system",
       "Start a backup of the sink and the spool (409 BACKUP_RUNNING while one is being made)",
       {202: BackupStarted}, errors=(409,)),
    Op("get", f"{SYSTEM}/backups", "listBackups", "system", "Backups, newest first", {200: BackupList}),
    Op("get", f"{SYSTEM}/backups/{{backup_id}}", "getBackup", "system", "One backup (404 BACKUP_NOT_FOUND)",
       {200: Backup}, errors=(404,)),
    Op("post", f"{SYSTEM}/backups/{{backup_id}}/verify", "verifyBackup", "system",
       "Read a backup back and check every part (checksums, sizes, SQLite's check, row counts)",
       {200: BackupVerification}, errors=(404,)),
    Op("get", "/openapi.json", "openapi", "system", "This document", {200: JSON_OBJECT}),
    Op("get", "/docs", "docs", "system", "A page that renders this document", {200: HTML}),
)

_ERRORS = {
    400: "The body is not JSON, or has the wrong content type",
    401: "No valid API key (only when auth.keys are configured); on logins and login sessions: wrong credentials "
         "(INVALID_CREDENTIALS) or a session that is not valid (SESSION_INVALID)",
    403: "The API key lacks the scope this path needs, or a presigned URL was altered or has expired",
    404: "Unknown id or path",
    408: "The body did not arrive in time",
    409: "Not applied: a write with a newer version (updated_at) keeps the stored value; a username or email "
         "already used (USERNAME_TAKEN, EMAIL_TAKEN); a disabled user (USER_DISABLED); a backup already being "
         "made (BACKUP_RUNNING)",
    413: "The body is larger than allowed",
    416: "The Range cannot be served: one range inside the content (Content-Range: bytes */size)",
    422: "The request breaks the rules: every bad field is listed in errors",
    429: "Too many requests (the backlog would take longer than spool.max_lag to drain, the API key's rate "
         "limit, or too many failed logins for one login): retry after Retry-After; nothing was accepted",
    500: "A bug, or a command the database refused for good (COMMAND_FAILED, dead-lettered); logged with the "
         "request_id the body carries",
    503: "Not available now (spool full, database unreachable, shutting down): retry after Retry-After",
}
# Paths that never ask for an API key: their routes declare access="open" (core.auth.ScopedRoute).
_OPEN_PATHS = ("/health", "/openapi.json", "/docs", f"{FILES}/{{file_id}}/download",
               f"{FILES}/uploads/{{file_id}}/content")
_SECURITY = {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
             "bearer": {"type": "http", "scheme": "bearer"}}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}


def openapi_document() -> dict[str, Any]:
    types = _types(OPERATIONS)
    refs, schemas = msgspec.json.schema_components(types, ref_template=REF)
    ref_of = dict(zip(types, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, ref_of)
    return {
        "openapi": "3.1.0",
        "info": {"title": "persistence-service", "version": VERSION,
                 "description": "Durable write-behind persistence for translation sessions and tasks. "
                                "One base URL (port 8001) answers every path."},
        "paths": paths,
        # A key is needed only when the service has auth.keys configured: {} makes it optional.
        "security": [{}, {"apiKey": []}, {"bearer": []}],
        "components": {"schemas": schemas, "responses": _error_responses(), "securitySchemes": _SECURITY},
    }


def _types(ops: tuple[Op, ...]) -> list[type[Struct]]:
    found: list[type[Struct]] = [t.ErrorBody]
    for op in ops:
        for kind in (op.body, *op.answers.values()):
            if kind is not None and not isinstance(kind, str | tuple) and kind not in found:  # a Struct, or a generic one's alias
                found.append(kind)
    return found


def _operation(op: Op, ref_of: dict[type, dict[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {"operationId": op.op_id, "tags": [op.tag], "summary": op.summary}
    params = [_path_param(name) for name in _PATH_PARAM.findall(op.path)] + [_query_param(p) for p in op.params]
    if params:
        doc["parameters"] = params
    if op.body is not None:
        doc["requestBody"] = {"required": not op.is_body_optional,
                              "content": {"application/json": {"schema": ref_of[op.body]}}}
    if op.is_upload:
        form = {"type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "contentMediaType": BINARY},
                               "session_id": {"type": "string", "maxLength": 36},
                               "owner_id": {"type": "string", "maxLength": 64},
                               "tags": {"type": "string", "description": "comma-separated"}}}
        # An empty body is an empty file.
        doc["requestBody"] = {"required": False, "content": {
            "multipart/form-data": {"schema": form}, "*/*": {"schema": {}}}}  # any bytes are a file
    responses = {str(status): _answer(status, kind, ref_of) for status, kind in op.answers.items()}
    auth = () if op.path in _OPEN_PATHS else (401, 403, 429)
    for status in (*op.errors, *auth, 500):
        responses.setdefault(str(status), {"$ref": f"#/components/responses/Error{status}"})
    doc["responses"] = responses
    return doc


def _answer(status: int, kind: Answer, ref_of: dict[type, dict[str, Any]]) -> dict[str, Any]:
    description = "OK" if status < 300 else _ERRORS.get(status, "Error")
    if kind == JSON_OBJECT:
        content = {"application/json": {"schema": {"type": "object"}}}
    elif isinstance(kind, str):
        content = {kind: {"schema": {"type": "string"}}}
    elif isinstance(kind, tuple):
        content = {media: {"schema": {"type": "string"}} for media in kind}
    else:
        content = {"application/json": {"schema": ref_of[kind]}}
    answer: dict[str, Any] = {"description": description if status != 202 else "Accepted", "content": content}
    if status == 503:
        answer["headers"] = _RETRY_AFTER
    return answer


def _path_param(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if name in _PATH_PARAM_LENGTH:
        schema["maxLength"] = _PATH_PARAM_LENGTH[name]
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query_param(param: Param) -> dict[str, Any]:
    doc = {"name": param.name, "in": "query", "required": False, "schema": param.schema}
    if param.description:
        doc["description"] = param.description
    return doc


def _error_responses() -> dict[str, Any]:
    body = {"application/json": {"schema": {"$ref": REF.format(name="ErrorBody")}}}
    out: dict[str, Any] = {}
    for status, description in _ERRORS.items():
        out[f"Error{status}"] = {"description": description, "content": body}
        if status in (429, 503):
            out[f"Error{status}"]["headers"] = _RETRY_AFTER
    return out
