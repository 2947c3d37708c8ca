"""The S3 blob store: any S3-compatible server (AWS S3, SeaweedFS, Ceph RGW, OSS).

    files.url = "s3://bucket/optional/prefix?endpoint=http://127.0.0.1:8333&region=us-east-1"

Objects stay where they were uploaded (content_key answers the staged key):
a server-side copy of a large object costs what the upload did. A writer
holds at most one part in memory: an object that fits in one part is one
PUT, a larger one a multipart upload that becomes visible only on complete.
Every botocore failure surfaces as BlobStoreError (BlobMissing for an absent
object) with the operation and the S3 error code, never a credential.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from core.settings import FilesSettings
from plugins.blobs import READ_CHUNK_BYTES, BlobMissing, BlobStoreError

UPLOADS = "uploads/"
# Codes S3 servers answer for an absent object or multipart upload (HEAD has no body, only the status).
MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload"})

CLIENT_CONFIG = Config(
    signature_version="s3v4",
    s3={"addressing_style": "path"},  # virtual-host buckets need DNS that local S3 servers do not have
    # Newer botocore adds CRC checksums that several S3-compatible servers reject or do not return.
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
    connect_timeout=5,
    read_timeout=60,
    retries={"mode": "standard", "max_attempts": 3},
    max_pool_connections=32,  # the query app reads from a thread pool of about this size
)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "unknown"))


@contextmanager
def _s3(operation: str, key: str = "") -> Iterator[None]:
    """Turn a botocore failure into BlobStoreError: the code only, since messages may quote requests."""
    try:
        yield
    except ClientError as exc:
        code = _code(exc)
        if code in MISSING_CODES:
            raise BlobMissing(key) from exc
        raise BlobStoreError(f"s3 {operation} failed: {code}") from exc
    except BotoCoreError as exc:
        raise BlobStoreError(f"s3 {operation} failed: {type(exc).__name__}") from exc


class S3Writer:
    def __init__(self, store: S3BlobStore, key: str, part_bytes: int) -> None:
        self._store = store
        self._key = key
        self._part_bytes = part_bytes
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._closed = False

    def write(self, data: bytes) -> None:
        if self._closed:
            raise RuntimeError("write after commit or abort")
        view = memoryview(data)
        while view:
            # A full buffer is sent only when more bytes follow, so an object of exactly one part is one PUT.
            if len(self._buffer) == self._part_bytes:
                self._send_part()
            room = self._part_bytes - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]

    def _send_part(self) -> None:
        client, bucket = self._store.client, self._store.bucket
        if self._upload_id is None:
            with _s3("create_multipart_upload", self._key):
                self._upload_id = client.create_multipart_upload(Bucket=bucket, Key=self._key)["UploadId"]
        number = len(self._parts) + 1
        with _s3("upload_part", self._key):
            answer = client.upload_part(Bucket=bucket, Key=self._key, UploadId=self._upload_id,
                                        PartNumber=number, Body=self._buffer)
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        self._buffer = bytearray()

    def commit(self) -> None:
        if self._closed:
            raise RuntimeError("commit after commit or abort")
        client, bucket = self._store.client, self._store.bucket
        if self._upload_id is None:
            with _s3("put_object", self._key):
                client.put_object(Bucket=bucket, Key=self._key, Body=self._buffer)
        else:
            self._send_part()  # the last part, which may be shorter than the others
            with _s3("complete_multipart_upload", self._key):
                client.complete_multipart_upload(Bucket=bucket, Key=self._key, UploadId=self._upload_id,
                                                 MultipartUpload={"Parts": self._parts})
        self._closed = True
        self._buffer = bytearray()

    def abort(self) -> None:
        """Idempotent; after commit it leaves the object alone. A failed abort
        leaves an unfinished upload that the next sweep aborts."""
        upload_id, self._upload_id = self._upload_id, None
        self._buffer = bytearray()
        if self._closed:
            return
        self._closed = True
        if upload_id is not None:
            self._store.abort_upload(self._key, upload_id)


class S3BlobStore:
    scheme = "s3"

    def __init__(self, client: Any, bucket: str, prefix: str, part_bytes: int) -> None:
        self.client = client
        self.bucket = bucket
        self._prefix = prefix
        self._part_bytes = part_bytes

    @classmethod
    def open(cls, settings: FilesSettings) -> S3BlobStore:
        parts = urlsplit(settings.url)
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint", "region"}
        if parts.scheme != "s3" or not parts.netloc or unknown:
            raise ValueError("files.url must be s3://bucket[/prefix][?endpoint=URL&region=NAME]")
        if bool(settings.access_key) != bool(settings.secret_key):
            raise ValueError("files.access_key and files.secret_key go together")
        credentials: dict[str, str] = {}
        if settings.access_key:
            credentials = {"aws_access_key_id": settings.access_key,
                           "aws_secret_access_key": settings.secret_key}
        client = boto3.session.Session().client(
            "s3", endpoint_url=query.get("endpoint"), region_name=query.get("region", settings.region),
            config=CLIENT_CONFIG, **credentials)
        return cls(client, parts.netloc, parts.path.strip("/"), settings.part_bytes)

    def _full(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self._prefix) + 1:] if self._prefix else full_key

    def writer(self, key: str) -> S3Writer:
        return S3Writer(self, self._full(key), self._part_bytes)

    def content_key(self, sha256: str, staged_key: str) -> str:
        return staged_key

    def promote(self, staged_key: str, key: str) -> bool:
        if staged_key == key:
            return True
        if self.exists(key):
            self.delete(staged_key)
            return False
        with _s3("copy_object", staged_key):
            self.client.copy_object(Bucket=self.bucket, Key=self._full(key),
                                    CopySource={"Bucket": self.bucket, "Key": self._full(staged_key)})
        self.delete(staged_key)
        return True

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except BlobMissing:
            return False
        return True

    def size(self, key: str) -> int:
        with _s3("head_object", key):
            return int(self.client.head_object(Bucket=self.bucket, Key=self._full(key))["ContentLength"])

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if end is not None and end <= start:
            self.size(key)  # an empty range of an absent object is still BlobMissing
            return iter(())
        ranged = {} if start == 0 and end is None else {"Range": f"bytes={start}-{'' if end is None else end - 1}"}
        with _s3("get_object", key):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=self._full(key), **ranged)["Body"]
            except ClientError as exc:
                if _code(exc) != "InvalidRange":
                    raise
                return iter(())  # a range past the end holds no bytes, as in a file
        return _Chunks(body)

    def delete(self, key: str) -> None:
        with _s3("delete_object", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))  # S3 answers 204 when absent too

    def presign_get(self, key: str, expires_in: int, filename_header: str, content_type: str) -> str | None:
        params = {"Bucket": self.bucket, "Key": self._full(key),
                  "ResponseContentDisposition": filename_header, "ResponseContentType": content_type}
        with _s3("presign get_object", key):
            return str(self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in))

    def presign_put(self, key: str, expires_in: int, content_type: str) -> tuple[str, dict[str, str]] | None:
        # ContentType is signed: a PUT with another Content-Type gets 403.
        params = {"Bucket": self.bucket, "Key": self._full(key), "ContentType": content_type}
        with _s3("presign put_object", key):
            url = str(self.client.generate_presigned_url("put_object", Params=params, ExpiresIn=expires_in))
        return url, {"Content-Type": content_type}

    def listing(self, prefix: str) -> Iterator[tuple[str, int]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._full(prefix))
        with _s3("list_objects_v2"):
            for page in pages:
                for item in page.get("Contents", []):
                    yield self._relative(item["Key"]), int(item["Size"])

    def sweep(self, older_than_s: float, is_live: Callable[[str], bool]) -> int:
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        return self._sweep_uploads(cutoff, is_live) + self._abort_multipart(cutoff)

    def _sweep_uploads(self, cutoff: datetime, is_live: Callable[[str], bool]) -> int:
        removed = 0
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                      Prefix=self._full(UPLOADS))
        with _s3("list_objects_v2"):
            for page in pages:
                for item in page.get("Contents", []):
                    key = self._relative(item["Key"])
                    if item["LastModified"] < cutoff and not is_live(key):
                        self.delete(key)
                        removed += 1
        return removed

    def _abort_multipart(self, cutoff: datetime) -> int:
        """Unfinished multipart uploads of writers that died (a live writer is younger than the cutoff)."""
        removed = 0
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=f"{self._prefix}/" if self._prefix else "")
        with _s3("list_multipart_uploads"):
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < cutoff:
                        self.abort_upload(upload["Key"], upload["UploadId"])
                        removed += 1
        return removed

    def abort_upload(self, full_key: str, upload_id: str) -> None:
        try:
            with _s3("abort_multipart_upload", full_key):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
        except BlobMissing:
            pass  # already aborted, swept or completed

    def check(self) -> None:
        try:
            with _s3("head_bucket"):
                self.client.head_bucket(Bucket=self.bucket)
        except BlobMissing:
            raise BlobStoreError(f"s3 bucket {self.bucket} does not exist") from None

    def close(self) -> None:
        self.client.close()


class _Chunks:
    """The body in chunks. Not a generator: close() must release the
    connection even before the first chunk, and a generator's finally only
    runs once it has started."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def __iter__(self) -> _Chunks:
        return self

    def __next__(self) -> bytes:
        with _s3("get_object"):
            chunk = bytes(self._body.read(READ_CHUNK_BYTES))
        if not chunk:
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        self._body.close()
