"""The Files API of API.md (Phase 2), served by the query process.

Uploads stream from the socket into the blob store; downloads stream from
the store to the socket. Neither holds a whole file in memory."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from core import metrics
from core.auth import ScopedRoute
from core.errors import BodyTooLarge, ClientError, FieldError, Invalid
from persistence_api.files import (
    MAX_TAG_CHARS,
    MAX_TAGS,
    CompleteRequest,
    FileDeleted,
    FileList,
    PresignedUpload,
    PresignedUrl,
    PresignRequest,
    UploadRequest,
    content_type_problem,
    filename_problem,
)
from core.http import decode_body, error_response, json_response
from core.times import iso_z, now_us
from files.multipart import MultipartUpload, boundary_of
from files.service import FileService, StoreUnavailable, UploadNotFound, file_view
from plugins.blobs import BlobMissing, upload_key
from plugins.file_catalog import FileFilter, FileRow
from query.params import ParamReader

logger = logging.getLogger(__name__)
API = "/api/v1/files"
SMALL_BODY = 64 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and the small fields around the file part
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


class RangeNotSatisfiable(ClientError):
    status = 416
    error_code = "RANGE_NOT_SATISFIABLE"


def _files(request: Request) -> FileService:
    return request.state.files


# -- metadata checks ---------------------------------------------------------


def _metadata(filename: str | None, content_type: str, session_id: str | None, owner_id: str | None,
              tags: list[str]) -> dict[str, Any]:
    errors = []
    if filename is None:
        errors.append(FieldError("filename", "required: the file's name"))
    elif problem := filename_problem(filename):
        errors.append(FieldError("filename", problem))
    if problem := content_type_problem(content_type):
        errors.append(FieldError("content_type", problem))
    for name, value, limit in (("session_id", session_id, 36), ("owner_id", owner_id, 64)):
        if value is not None and not 1 <= len(value) <= limit:
            errors.append(FieldError(name, f"must be 1 to {limit} characters"))
    if len(tags) > MAX_TAGS:
        errors.append(FieldError("tags", f"at most {MAX_TAGS} tags"))
    for tag in tags:
        if not 1 <= len(tag) <= MAX_TAG_CHARS or any(ord(c) < 32 for c in tag):
            errors.append(FieldError("tags", f"each tag is 1 to {MAX_TAG_CHARS} printable characters"))
            break
    if errors:
        raise Invalid(errors)
    return {"filename": filename, "content_type": content_type, "session_id": session_id, "owner_id": owner_id,
            "tags": list(dict.fromkeys(tags))}


def _split_tags(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit, "files.max_bytes")


# -- upload ----------------------------------------------------------------------


async def upload(request: Request) -> Response:
    files = _files(request)
    limit = files.settings.max_bytes
    content_type = request.headers.get("content-type", "application/octet-stream")
    file_id = str(uuid.uuid4())
    try:
        # The query string is checked before any byte of the body is read, in both forms.
        params = ParamReader(request.query_params)
        asked = {name: params.get(name) for name in ("filename", "session_id", "owner_id", "tags")}
        params.done()
        _metadata(asked["filename"] or "-", "application/octet-stream", asked["session_id"], asked["owner_id"],
                  _split_tags(asked["tags"]))
        if content_type.lower().startswith("multipart/form-data"):
            _check_declared_length(request, limit + MULTIPART_OVERHEAD)
            form = MultipartUpload(boundary_of(content_type))
            sha256, size = await files.receive(upload_key(file_id), _file_part(request, form), limit,
                                               "files.max_bytes")
            try:
                form.close()
                # Parts win over the query string's fields.
                fields = {name: form.fields.get(name) or asked[name] for name in ("session_id", "owner_id", "tags")}
                meta = _metadata(form.filename or asked["filename"], form.content_type or "application/octet-stream",
                                 fields["session_id"], fields["owner_id"], _split_tags(fields["tags"]))
            except ClientError:
                await files.run(files.store.delete, upload_key(file_id))
                raise
        else:
            meta = _metadata(asked["filename"], content_type.strip(), asked["session_id"], asked["owner_id"],
                             _split_tags(asked["tags"]))
            _check_declared_length(request, limit)
            sha256, size = await files.receive(upload_key(file_id), request.stream(), limit, "files.max_bytes")
        created = await files.create(file_id, sha256, size, meta)
    except ClientDisconnect:
        metrics.FILE_UPLOADS.labels("aborted").inc()
        return Response(status_code=400)  # nobody reads it; the writer was dropped
    except BodyTooLarge:
        metrics.FILE_UPLOADS.labels("too_large").inc()
        raise
    except ClientError:
        metrics.FILE_UPLOADS.labels("rejected").inc()
        raise
    except Exception:
        metrics.FILE_UPLOADS.labels("failed").inc()
        raise
    await _record_upload(request, created)
    return json_response(created, 201, {"ETag": f'"{created.sha256}"', "Location": f"{API}/{file_id}"})


async def _record_upload(request: Request, created: Any) -> None:
    """The audit event of a stored file: its id, name and size, never its content."""
    await request.state.audit_trail.record(request, "file.upload", "file", created.file_id,
                                           details={"filename": created.filename, "size": created.size})


async def _file_part(request: Request, form: MultipartUpload) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        data = form.feed(chunk)
        if data:
            yield data


# -- reads ---------------------------------------------------------------------


async def get_file(request: Request) -> Response:
    row = await _files(request).get(request.path_params["file_id"])
    return json_response(file_view(row), headers={"ETag": f'"{row.sha256}"'})


async def list_files(request: Request) -> Response:
    r = ParamReader(request.query_params)
    flt = FileFilter(session_id=r.text("session_id", 36), owner_id=r.text("owner_id", 64),
                     content_type=r.text("content_type", 255), tag=r.text("tag", MAX_TAG_CHARS),
                     created_from=r.time("created_from", is_upper=False),
                     created_before=r.time("created_to", is_upper=True))
    limit = r.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    after = r.keyset_cursor("files", flt, 2)
    r.done()
    files = _files(request)
    rows = await files.run(files.catalog.list_ready, flt, after, limit + 1)  # one more: is there a next page?
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = r.issue_cursor("files", flt, [rows[-1].created_at, rows[-1].file_id]) if more else None
    return json_response(FileList(items=[file_view(row) for row in rows], next_cursor=next_cursor))


async def content(request: Request) -> Response:
    return await _serve(request, await _files(request).get(request.path_params["file_id"]))


async def signed_content(request: Request) -> Response:
    files = _files(request)
    file_id = request.path_params["file_id"]
    if files.signer is None:
        raise StoreUnavailable("the service signs no URLs for this store")
    files.signer.check("GET", file_id, request.query_params.get("expires"), request.query_params.get("signature"))
    return await _serve(request, await files.get(file_id))


def content_disposition(filename: str) -> str:
    """attachment with an ASCII fallback and the exact name in RFC 5987 form (CJK kept)."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a single `bytes=` range, None for the whole content;
    RangeNotSatisfiable when it is malformed, multiple or outside the content."""
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    spec = spec.strip()
    if unit.strip().lower() != "bytes" or not spec or "," in spec:
        raise RangeNotSatisfiable("Range must be one range: bytes=first-last, bytes=first- or bytes=-suffix",
                                  size=size)
    first, dash, last = spec.partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not (first or last) or not (first.isdigit() or not first) or not (last.isdigit() or not last):
        raise RangeNotSatisfiable(f"Range {header!r} is not bytes=first-last", size=size)
    if not first:  # the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable("the suffix range selects nothing", size=size)
        return max(0, size - n), size
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable(f"Range {header!r} is outside the content ({size} bytes)", size=size)
    return start, end


def _etag_matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    candidates = [c.strip() for c in header.split(",")]
    return "*" in candidates or any(c.removeprefix("W/") == etag for c in candidates)


async def _serve(request: Request, row: FileRow) -> Response:
    files = _files(request)
    etag = f'"{row.sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Disposition": content_disposition(row.filename)}
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    span = byte_range(request.headers.get("range"), row.size)
    status = 200
    start, end = 0, row.size
    if span is not None:
        start, end = span
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{row.size}"
    headers["Content-Length"] = str(end - start)
    headers["Content-Type"] = row.content_type  # as stored: Starlette's media_type would add a charset
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    key = await files.content_key(row)
    try:
        chunks = await files.run(files.store.read, key, start, end)
    except BlobMissing:
        raise StoreUnavailable(f"file {row.file_id}: the store has no object {key}") from None
    return StreamingResponse(_stream(files, chunks), status_code=status, headers=headers)


async def _stream(files: FileService, chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    try:
        while True:
            chunk = await files.run(next, chunks, None)
            if chunk is None:
                return
            metrics.FILE_BYTES.labels("out").inc(len(chunk))
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            await files.threads.run(close)


# -- presigned URLs --------------------------------------------------------------


def _public_base(request: Request, files: FileService) -> str:
    if files.settings.public_url:
        return files.settings.public_url.rstrip("/")
    host = request.headers.get("x-forwarded-host") or request.headers.get("host") or "127.0.0.1"
    scheme = request.headers.get("x-forwarded-proto") or request.url.scheme
    return f"{scheme}://{host}"


async def presign(request: Request) -> Response:
    files = _files(request)
    asked = await decode_body(request, PresignRequest, SMALL_BODY, allow_empty=True)
    row = await files.get(request.path_params["file_id"])
    expires_at = iso_z(now_us() + asked.expires_in * 1_000_000)
    if files.signer is not None and files.store.scheme == "file":
        query, _ = files.signer.query("GET", row.file_id, asked.expires_in)
        url = f"{_public_base(request, files)}{API}/{row.file_id}/download?{query}"
    else:
        key = await files.content_key(row)
        signed = await files.run(files.store.presign_get, key, asked.expires_in, content_disposition(row.filename),
                                 row.content_type)
        if signed is None:
            raise StoreUnavailable("the store cannot sign URLs")
        url = signed
    return json_response(PresignedUrl(url=url, method="GET", expires_at=expires_at))


async def start_upload(request: Request) -> Response:
    files = _files(request)
    asked = await decode_body(request, UploadRequest, SMALL_BODY)
    meta = _metadata(asked.filename, asked.content_type, asked.session_id, asked.owner_id, asked.tags)
    if asked.size > files.settings.max_bytes:
        raise Invalid([FieldError("size", f"must be at most files.max_bytes ({files.settings.max_bytes})")])
    expires_in = asked.expires_in or int(files.settings.upload_expiry)
    file_id, _ = await files.start_upload({**meta, "size": asked.size}, expires_in)
    expires_at = iso_z(now_us() + expires_in * 1_000_000)
    signed = await files.run(files.store.presign_put, upload_key(file_id), expires_in, asked.content_type)
    if signed is not None:
        url, headers = signed
    else:
        assert files.signer is not None
        query, _ = files.signer.query("PUT", file_id, expires_in)
        url, headers = f"{_public_base(request, files)}{API}/uploads/{file_id}/content?{query}", \
            {"Content-Type": asked.content_type}
    return json_response(PresignedUpload(file_id=file_id, url=url, headers=headers, expires_at=expires_at), 201)


async def signed_put(request: Request) -> Response:
    """The local store's presigned PUT: the bytes of a pending upload."""
    files = _files(request)
    file_id = request.path_params["file_id"]
    if files.signer is None:
        raise StoreUnavailable("the service signs no URLs for this store")
    files.signer.check("PUT", file_id, request.query_params.get("expires"), request.query_params.get("signature"))
    pending = await files.run(files.catalog.pending, file_id)
    if pending is None or pending.upload_key is None:
        raise UploadNotFound(file_id)
    _check_declared_length(request, pending.row.size)
    try:
        _, size = await files.receive(pending.upload_key, request.stream(), pending.row.size, "the announced size")
    except ClientDisconnect:
        metrics.FILE_UPLOADS.labels("aborted").inc()
        return Response(status_code=400)
    return json_response({"file_id": file_id, "size": size})


async def complete(request: Request) -> Response:
    files = _files(request)
    asked = await decode_body(request, CompleteRequest, SMALL_BODY, allow_empty=True)
    created = await files.complete(request.path_params["file_id"], asked.sha256)
    await _record_upload(request, created)
    return json_response(created, 201, {"ETag": f'"{created.sha256}"'})


async def delete(request: Request) -> Response:
    file_id = request.path_params["file_id"]
    await _files(request).delete(file_id)
    await request.state.audit_trail.record(request, "file.delete", "file", file_id)
    return json_response(FileDeleted(file_id=file_id))


async def store_unavailable(request: Request, exc: Exception) -> Response:
    return error_response(503, "The file store cannot be used now; retry later.", "STORE_UNAVAILABLE",
                          headers={"Retry-After": "5"})


ROUTES = [
    ScopedRoute(API, upload, methods=["POST"], access="write"),
    ScopedRoute(API, list_files, methods=["GET"], access="read"),
    ScopedRoute(f"{API}/uploads", start_upload, methods=["POST"], access="write"),
    ScopedRoute(f"{API}/uploads/{{file_id}}/content", signed_put, methods=["PUT"], access="open"),
    ScopedRoute(f"{API}/uploads/{{file_id}}/complete", complete, methods=["POST"], access="write"),
    ScopedRoute(f"{API}/{{file_id}}", get_file, methods=["GET"], access="read"),
    ScopedRoute(f"{API}/{{file_id}}", delete, methods=["DELETE"], access="admin"),
    ScopedRoute(f"{API}/{{file_id}}/content", content, methods=["GET", "HEAD"], access="read"),
    ScopedRoute(f"{API}/{{file_id}}/download", signed_content, methods=["GET", "HEAD"], access="open"),
    ScopedRoute(f"{API}/{{file_id}}/presign", presign, methods=["POST"], access="read"),
]

