"""What an upload, a completion, a delete and the sweeper do, in order, over
a blob store and the file catalog. The order is what keeps a crash
harmless (plugins/file_catalog.py explains the lock):

  upload:   bytes -> uploads/<file_id> (committed: fsync + rename, or S3's own)
            -> catalog: pending file + content reference (one transaction)
            -> content made readable under its content key (or dropped: already stored)
            -> catalog: ready -> 201
  delete:   catalog: file gone, reference dropped -> unreferenced content collected
  sweeper:  expired pending uploads dropped; unreferenced content collected;
            leftovers of dead writers removed from the store

A kill -9 anywhere leaves at most a pending row (invisible, dropped when it
expires), an unreferenced object (collected) or a temp file (swept at the
next start): never a visible file without its bytes.

Every blocking call (store, catalog) runs in the service's own threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from core import metrics
from core.errors import BodyTimeout, BodyTooLarge, ClientError, FieldError, Invalid, NotFound
from persistence_api.files import File
from core.settings import FilesSettings
from core.times import db_text, now_us
from files.signing import Signer, load_key
from plugins.blobs import BlobMissing, BlobStore, BlobStoreError, BlobWriter, upload_key
from plugins.file_catalog import CatalogError, FileCatalog, FileRow
from query.read_threads import ReadThreads
from query.views import iso

logger = logging.getLogger(__name__)
T = TypeVar("T")
FILE_THREADS = 8
WRITE_BYTES = 1024 * 1024  # body chunks are gathered to this size before a write in a thread
# A direct upload's committed bytes wait this long for their catalog row before the sweep may take them.
LEFTOVER_AGE_S = 600.0


class FileNotFound(NotFound):
    error_code = "FILE_NOT_FOUND"

    def __init__(self, file_id: str) -> None:
        super().__init__("File not found", file_id=file_id)


class UploadNotFound(NotFound):
    error_code = "UPLOAD_NOT_FOUND"

    def __init__(self, file_id: str) -> None:
        super().__init__("Upload not found (unknown, completed long ago, or expired)", file_id=file_id)


class ContentMismatch(Invalid):
    error_code = "CONTENT_MISMATCH"


class UploadMissing(ClientError):
    status = 409
    error_code = "UPLOAD_NOT_RECEIVED"


class StoreUnavailable(Exception):
    """The blob store failed: 503, logged, counted."""


def file_view(row: FileRow) -> File:
    return File(file_id=row.file_id, filename=row.filename, content_type=row.content_type, size=row.size,
                sha256=row.sha256 or "", session_id=row.session_id, owner_id=row.owner_id, tags=row.tags,
                created_at=iso(row.created_at))


class FileService:
    def __init__(self, settings: FilesSettings, store: BlobStore, catalog: FileCatalog) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.threads = ReadThreads(FILE_THREADS)
        folder = Path(settings.url[len("file://"):]) if store.scheme == "file" else None
        self.signer = Signer(load_key(settings.signing_secret, folder)) if folder or settings.signing_secret \
            else None

    def close(self) -> None:
        self.threads.close()
        self.store.close()
        self.catalog.close()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a file thread; a store failure becomes StoreUnavailable (counted)."""
        try:
            return await self.threads.run(fn, *args)
        except BlobMissing:
            raise
        except BlobStoreError as exc:
            metrics.BLOB_STORE_ERRORS.labels(getattr(fn, "__name__", "call")).inc()
            logger.warning("blob store %s failed: %s", getattr(fn, "__name__", fn), exc)
            raise StoreUnavailable(str(exc)) from exc

    # -- receiving bytes ---------------------------------------------------

    async def receive(self, key: str, body: AsyncIterator[bytes], limit: int, what: str) -> tuple[str, int]:
        """Stream body into a new object under key; (sha256, size) once it is
        committed. More than `limit` bytes: BodyTooLarge, nothing kept. A body
        that stops (client gone, timeout, error): nothing kept."""
        writer: BlobWriter = await self.run(self.store.writer, key)
        digest = hashlib.sha256()
        size = 0
        pending: list[bytes] = []
        pending_bytes = 0
        # One block is hashed and written in a thread while the next one is read from the socket.
        in_flight: asyncio.Future[None] | None = None
        try:
            iterator = body.__aiter__()
            while True:
                try:
                    async with asyncio.timeout(self.settings.body_timeout):
                        chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise BodyTimeout(self.settings.body_timeout) from None
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(limit, what)
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= WRITE_BYTES:
                    if in_flight is not None:
                        await in_flight
                    in_flight = asyncio.ensure_future(self.run(_write, writer, digest, pending))
                    pending, pending_bytes = [], 0
            if in_flight is not None:
                await in_flight
                in_flight = None
            if pending:
                await self.run(_write, writer, digest, pending)
            await self.run(writer.commit)
        except BaseException:
            # Also on cancellation (the client went away): drop the bytes here and now.
            if in_flight is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(in_flight)  # a write still running in its thread must end first
            try:
                writer.abort()
            except BlobStoreError as exc:
                logger.warning("could not drop the bytes of an unfinished upload under %s: %s (the sweep will)",
                               key, exc)
            raise
        metrics.FILE_BYTES.labels("in").inc(size)
        return digest.hexdigest(), size

    # -- making a file ----------------------------------------------------

    async def create(self, file_id: str, sha256: str, size: int, meta: dict[str, Any]) -> File:
        """The bytes are committed under upload_key(file_id): record and publish the file."""
        staged = upload_key(file_id)
        candidate = self.store.content_key(sha256, staged)
        row = FileRow(file_id, meta["filename"], meta["content_type"], size, sha256, meta.get("session_id"),
                      meta.get("owner_id"), list(meta.get("tags") or []), db_text(now_us()))
        expires_at = db_text(now_us() + int(self.settings.upload_expiry * 1e6))
        try:
            stored_key = await self.run(self.catalog.reserve, row, candidate, expires_at)
        except CatalogError:
            await self.run(self.store.delete, staged)
            raise
        await self._publish(file_id, sha256, staged, candidate, stored_key)
        return file_view(row)

    async def _publish(self, file_id: str, sha256: str, staged: str, candidate: str, stored_key: str) -> None:
        if await self.run(self._place, sha256, staged, candidate, stored_key):
            metrics.FILE_DEDUP_HITS.inc()
        await self.run(self.catalog.mark_ready, file_id)
        metrics.FILE_UPLOADS.labels("created").inc()

    def _place(self, sha256: str, staged: str, candidate: str, stored_key: str) -> bool:
        """Make the content readable at stored_key; True when it was there already (dedup)."""
        if stored_key == candidate:
            return not self.store.promote(staged, candidate)
        if self.store.exists(stored_key):  # stored before, under another key (S3 keeps upload keys)
            self.store.delete(staged)
            return True
        # The catalog named an object that a collector removed before it crashed: keep this copy.
        self.store.promote(staged, candidate)
        self.catalog.repoint(sha256, candidate)
        return False

    # -- presigned uploads -------------------------------------------------

    async def start_upload(self, meta: dict[str, Any], expires_in: int) -> tuple[str, str]:
        """A pending upload; (file_id, expires_at storage text)."""
        file_id = str(uuid.uuid4())
        row = FileRow(file_id, meta["filename"], meta["content_type"], meta["size"], None, meta.get("session_id"),
                      meta.get("owner_id"), list(meta.get("tags") or []), db_text(now_us()))
        expires_at = db_text(now_us() + expires_in * 1_000_000)
        await self.run(self.catalog.add_upload, row, upload_key(file_id), expires_at)
        return file_id, expires_at

    async def complete(self, file_id: str, expected_sha: str | None) -> File:
        pending = await self.run(self.catalog.pending, file_id)
        if pending is None:
            done = await self.run(self.catalog.get, file_id)
            if done is None:
                raise UploadNotFound(file_id)
            if expected_sha is not None and done.sha256 != expected_sha:
                raise ContentMismatch([FieldError("sha256", "differs from the uploaded content's")])
            return file_view(done)  # completed before: the same answer again
        if pending.expires_at is not None and pending.expires_at < db_text(now_us()):
            raise UploadNotFound(file_id)  # expired: the sweeper drops it and its bytes
        row = pending.row
        staged = upload_key(file_id)
        if row.sha256 is None:
            try:
                sha256, size = await self.run(self._digest, staged)
            except BlobMissing:
                raise UploadMissing("Nothing was uploaded to the URL yet; PUT the bytes, then complete.",
                                    file_id=file_id) from None
            problems = []
            if size != row.size:
                problems.append(FieldError("size", f"the upload holds {size} bytes, {row.size} were announced"))
            if expected_sha is not None and expected_sha != sha256:
                problems.append(FieldError("sha256", "differs from the uploaded content's"))
            if problems:
                await self.run(self.catalog.drop_pending, file_id)
                await self.run(self.store.delete, staged)
                metrics.FILE_UPLOADS.labels("rejected").inc()
                raise ContentMismatch(problems, "The uploaded content does not match; the upload was dropped.")
            candidate = self.store.content_key(sha256, staged)
            stored_key = await self.run(self.catalog.attach, file_id, sha256, candidate, db_text(now_us()))
            if stored_key is None:
                raise UploadNotFound(file_id)
        else:  # a completion that stopped half way (crash): finish it
            sha256 = row.sha256
            candidate = self.store.content_key(sha256, staged)
            stored_key = await self.run(self.catalog.store_key, sha256) or candidate
        await self._publish(file_id, sha256, staged, candidate, stored_key)
        return file_view(row._replace(sha256=sha256))

    def _digest(self, key: str) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        chunks = self.store.read(key)
        try:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return digest.hexdigest(), size

    # -- reading -----------------------------------------------------------

    async def get(self, file_id: str) -> FileRow:
        row = await self.run(self.catalog.get, file_id)
        if row is None:
            raise FileNotFound(file_id)
        return row

    async def content_key(self, row: FileRow) -> str:
        key = await self.run(self.catalog.store_key, row.sha256 or "")
        if key is None:
            raise StoreUnavailable(f"file {row.file_id}: its content has no catalog entry")
        return key

    # -- deleting and collecting -------------------------------------------

    async def delete(self, file_id: str) -> None:
        sha256 = await self.run(self.catalog.delete, file_id)
        if sha256 is None:
            raise FileNotFound(file_id)
        try:
            if await self.run(self.catalog.collect, sha256, self.store.delete):
                metrics.FILES_COLLECTED.labels("contents").inc()
        except (StoreUnavailable, CatalogError) as exc:
            logger.warning("content of deleted file %s stays until the next sweep: %s", file_id, exc)

    def sweep(self) -> dict[str, int]:
        """One pass of the sweeper (blocking; runs in a thread)."""
        now = db_text(now_us())
        expired = 0
        for file_id in self.catalog.expired_uploads(now):
            dropped = self.catalog.drop_expired(file_id, now)
            if dropped is None:
                continue
            expired += 1
            key, sha256 = dropped
            if key is not None and sha256 is None:  # never attached: its bytes are nobody's
                self.store.delete(key)
        contents = sum(self.catalog.collect(sha256, self.store.delete) for sha256 in self.catalog.unreferenced())
        leftovers = self.store.sweep(min(LEFTOVER_AGE_S, self.settings.upload_expiry), self.catalog.is_live_key)
        for what, count in (("expired_uploads", expired), ("contents", contents), ("leftovers", leftovers)):
            metrics.FILES_COLLECTED.labels(what).inc(count)
        return {"expired_uploads": expired, "contents": contents, "leftovers": leftovers}


def _write(writer: BlobWriter, digest: Any, chunks: list[bytes]) -> None:
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    digest.update(data)
    writer.write(data)

