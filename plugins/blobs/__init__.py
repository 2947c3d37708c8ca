"""Blob stores: where file content lives, behind one small interface.

`files.url` names the store: `file:///path` (the embedded default,
plugins/blobs/local.py) or `s3://bucket/prefix?endpoint=...`
(plugins/blobs/s3.py, any S3-compatible store). The file catalog in the
sink says which key holds which content; a store only keeps bytes under
keys. Every method is blocking: the query app calls them in threads.

Keys are relative, '/'-separated, and made by the service, never by a client:
`uploads/<file_id>` for the bytes of one upload (direct or presigned), and
whatever `content_key` answers for content the catalog refers to (the local
store moves it to `sha256/ab/<digest>`; S3 keeps it where it was uploaded,
because a server-side copy of a large object costs what the upload did).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol
from urllib.parse import urlsplit

from core.settings import FilesSettings

READ_CHUNK_BYTES = 1024 * 1024  # one thread hop per MiB of a download


class BlobStoreError(Exception):
    """The store failed or cannot be reached; nothing the client did. The
    message never holds a credential."""


class BlobMissing(BlobStoreError):
    """No object under that key."""


def upload_key(file_id: str) -> str:
    """Where the bytes of upload `file_id` are written (and, on S3, stay)."""
    return f"uploads/{file_id}"


class BlobWriter(Protocol):
    """The bytes of one object, written in order. Nothing is visible under
    the key until commit() returns; abort() (or a crash) leaves nothing
    that a sweep does not remove."""

    def write(self, data: bytes) -> None: ...

    def commit(self) -> None:
        """Durable and readable under the key from now on."""

    def abort(self) -> None:
        """Drop what was written; safe to call after a failed write or twice."""


class BlobStore(Protocol):
    scheme: str  # "file" or "s3": /health and metrics labels

    def writer(self, key: str) -> BlobWriter:
        """A writer of a new object under key (replacing none: keys are unique per upload)."""

    def content_key(self, sha256: str, staged_key: str) -> str:
        """The key that content with this digest, now at staged_key, is kept under."""

    def promote(self, staged_key: str, key: str) -> bool:
        """Make the bytes at staged_key readable at key (from content_key);
        False when key already held them (the staged copy is dropped: a
        dedup hit). A no-op returning True when the keys are equal."""

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int:
        """The object's length; BlobMissing when absent."""

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes [start, end) in chunks of at most READ_CHUNK_BYTES; BlobMissing when absent.
        The iterator must be closed (or exhausted) to release the connection."""

    def delete(self, key: str) -> None:
        """Remove the object; nothing happens when it is absent."""

    def listing(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every finished object whose key starts with prefix, in key order."""

    def presign_get(self, key: str, expires_in: int, filename_header: str, content_type: str) -> str | None:
        """A URL that downloads the object without credentials until it
        expires, answering with that Content-Disposition and Content-Type;
        None when the store cannot sign (the service signs and serves it)."""

    def presign_put(self, key: str, expires_in: int, content_type: str) -> tuple[str, dict[str, str]] | None:
        """A URL (and the headers the client must send) that stores a PUT body
        under key until it expires; None when the service must take the PUT."""

    def sweep(self, older_than_s: float, is_live: Callable[[str], bool]) -> int:
        """Delete leftovers of uploads that never finished: objects under
        uploads/ older than older_than_s for which is_live(key) is False,
        temp files of writers that died, unfinished multipart uploads.
        Returns how many were removed."""

    def check(self) -> None:
        """Raise BlobStoreError when the store cannot be used now (/health)."""

    def close(self) -> None: ...


def open_blob_store(settings: FilesSettings) -> BlobStore:
    """The store named by settings.url."""
    scheme = urlsplit(settings.url).scheme
    if scheme == "file":
        from plugins.blobs.local import LocalBlobStore
        return LocalBlobStore.open(settings)
    if scheme == "s3":
        from plugins.blobs.s3 import S3BlobStore
        return S3BlobStore.open(settings)
    raise ValueError(f"no blob store for scheme {scheme!r}")
