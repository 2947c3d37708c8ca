"""One contract, every blob store: the embedded folder store and S3 (a real
SeaweedFS that checks signatures). Adding a store means adding a parameter
to the `store` fixture; what only one store can do is asserted per scheme."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from core.settings import FilesSettings
from plugins.blobs import (
    READ_CHUNK_BYTES,
    BlobMissing,
    BlobStore,
    BlobStoreError,
    open_blob_store,
)
from plugins.blobs.s3 import S3BlobStore
from testkit.seaweed import SeaweedS3

MiB = 1024 * 1024
PART = 5 * MiB  # the smallest part S3 allows, so a multipart object stays small



@pytest.fixture
def prefix() -> str:
    return f"t/{uuid.uuid4().hex}"


def _s3_settings(server: SeaweedS3, prefix: str, **overrides: Any) -> FilesSettings:
    fields = {"url": server.url_with(prefix), "access_key": server.access_key,
              "secret_key": server.secret_key, "part_bytes": PART, **overrides}
    return FilesSettings(**fields)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, prefix: str) -> Iterator[BlobStore]:
    if request.param == "local":
        settings = FilesSettings(url=f"file://{tmp_path / 'files'}", part_bytes=PART)
    else:
        settings = _s3_settings(request.getfixturevalue("seaweed"), prefix)
    store = open_blob_store(settings)
    yield store
    store.close()


def _put(store: BlobStore, key: str, data: bytes, chunk: int = 64 * 1024) -> None:
    writer = store.writer(key)
    for at in range(0, len(data), chunk):
        writer.write(data[at:at + chunk])
    writer.commit()


def _read(store: BlobStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    chunks = list(store.read(key, start, end))
    assert all(0 < len(chunk) <= READ_CHUNK_BYTES for chunk in chunks)
    return b"".join(chunks)


def _http(method: str, url: str, data: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    """A request without credentials: status, body, headers (errors are answers too)."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(), dict(exc.headers)


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | changes
    return urlunsplit(parts._replace(query=urlencode(query)))


def _s3_object(seaweed: SeaweedS3, prefix: str, key: str) -> dict[str, Any]:
    """HEAD of the object behind a store key, straight from the server."""
    client = seaweed.client()
    try:
        return dict(client.head_object(Bucket=seaweed.bucket, Key=f"{prefix}/{key}"))
    finally:
        client.close()


def test_write_then_read_whole_and_ranges(store: BlobStore, rng: random.Random) -> None:
    data = rng.randbytes(READ_CHUNK_BYTES * 2 + 12345)  # several read chunks
    _put(store, "uploads/a", data, chunk=7777)
    n = len(data)
    assert store.exists("uploads/a")
    assert store.size("uploads/a") == n
    assert _read(store, "uploads/a") == data
    assert _read(store, "uploads/a", 0, 1) == data[:1]
    assert _read(store, "uploads/a", n - 1, n) == data[-1:]
    assert _read(store, "uploads/a", 1000, 300_000) == data[1000:300_000]
    assert _read(store, "uploads/a", n - 10) == data[-10:]
    assert _read(store, "uploads/a", 5, 5) == b""
    assert _read(store, "uploads/a", n) == b""  # past the end: no bytes, not an error
    assert _read(store, "uploads/a", n + 5, n + 10) == b""


def test_a_read_closed_early_releases_its_file_or_connection(store: BlobStore) -> None:
    _put(store, "uploads/long", b"r" * (READ_CHUNK_BYTES * 3))
    open_before = len(os.listdir("/proc/self/fd"))
    kept = []  # closed but still referenced: only close() can have released them
    for started in [True, False] * 20:
        chunks = store.read("uploads/long")
        if started:
            assert next(chunks) == b"r" * READ_CHUNK_BYTES
        chunks.close()  # type: ignore[attr-defined]  # the protocol promises a closable iterator
        kept.append(chunks)
    assert len(os.listdir("/proc/self/fd")) - open_before < 5
    assert _read(store, "uploads/long", 10, 20) == b"r" * 10


def test_empty_object(store: BlobStore) -> None:
    store.writer("uploads/empty").commit()
    assert store.exists("uploads/empty")
    assert store.size("uploads/empty") == 0
    assert _read(store, "uploads/empty") == b""
    assert _read(store, "uploads/empty", 0, 0) == b""


def test_multipart_object_reads_back_identical(store: BlobStore, rng: random.Random,
                                              request: pytest.FixtureRequest, prefix: str) -> None:
    data = rng.randbytes(11 * MiB)
    writer = store.writer("uploads/big")
    at = 0
    while at < len(data):
        step = rng.randrange(1, 700_000) | 1  # odd sizes: part boundaries fall inside writes
        writer.write(data[at:at + step])
        at += step
    writer.commit()
    assert store.size("uploads/big") == len(data)
    digest = hashlib.sha256()
    for chunk in store.read("uploads/big"):
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert _read(store, "uploads/big", PART - 3, PART + 3) == data[PART - 3:PART + 3]  # across a part boundary
    if store.scheme == "s3":  # it really went up as parts of 5 + 5 + 1 MiB
        assert _s3_object(request.getfixturevalue("seaweed"), prefix, "uploads/big")["ETag"].endswith('-3"')


def test_exactly_one_part_is_a_single_put(store: BlobStore, request: pytest.FixtureRequest, prefix: str) -> None:
    data = b"p" * PART
    _put(store, "uploads/one-part", data, chunk=MiB)
    assert _read(store, "uploads/one-part") == data
    if store.scheme == "s3":
        assert "-" not in _s3_object(request.getfixturevalue("seaweed"), prefix, "uploads/one-part")["ETag"]


def test_nothing_is_visible_before_commit(store: BlobStore) -> None:
    writer = store.writer("uploads/pending")
    writer.write(b"x" * (PART + 1))  # on S3 one part is already uploaded
    assert not store.exists("uploads/pending")
    with pytest.raises(BlobMissing):
        store.size("uploads/pending")
    writer.commit()
    assert store.size("uploads/pending") == PART + 1


def test_abort_leaves_nothing(store: BlobStore) -> None:
    writer = store.writer("uploads/aborted")
    writer.write(b"y" * (PART + 100))
    writer.abort()
    writer.abort()  # twice is safe
    assert not store.exists("uploads/aborted")
    assert store.sweep(0, lambda key: False) == 0  # no temp file, no unfinished multipart upload
    committed = store.writer("uploads/committed")
    committed.write(b"kept")
    committed.commit()
    committed.abort()  # e.g. from a `finally`: a committed object stays
    assert _read(store, "uploads/committed") == b"kept"


def test_missing_key(store: BlobStore) -> None:
    assert not store.exists("uploads/none")
    with pytest.raises(BlobMissing):
        store.size("uploads/none")
    for start, end in ((0, None), (3, 9), (0, 0)):
        with pytest.raises(BlobMissing):
            _read(store, "uploads/none", start, end)


def test_delete_is_idempotent(store: BlobStore) -> None:
    _put(store, "uploads/gone", b"bytes")
    store.delete("uploads/gone")
    assert not store.exists("uploads/gone")
    store.delete("uploads/gone")
    store.delete("uploads/never-was")
    with pytest.raises(BlobMissing):
        _read(store, "uploads/gone")


def test_content_key_and_promote(store: BlobStore) -> None:
    data = b"same content twice"
    digest = hashlib.sha256(data).hexdigest()
    _put(store, "uploads/first", data)
    key = store.content_key(digest, "uploads/first")
    assert store.promote("uploads/first", key) is True
    assert _read(store, key) == data
    if store.scheme == "s3":  # no server-side copy: the upload stays where it is
        assert key == "uploads/first"
        assert store.content_key(digest, "uploads/second") == "uploads/second"
        return
    assert key != "uploads/first" and digest in key
    assert not store.exists("uploads/first")
    _put(store, "uploads/second", data)
    assert store.content_key(digest, "uploads/second") == key
    assert store.promote("uploads/second", key) is False  # a dedup hit drops the staged copy
    assert not store.exists("uploads/second")
    assert _read(store, key) == data


def test_promote_to_another_key(store: BlobStore) -> None:
    """The general case of the contract, whatever content_key answers."""
    _put(store, "uploads/s1", b"content")
    assert store.promote("uploads/s1", "kept/c") is True
    assert not store.exists("uploads/s1")
    assert _read(store, "kept/c") == b"content"
    _put(store, "uploads/s2", b"content")
    assert store.promote("uploads/s2", "kept/c") is False
    assert not store.exists("uploads/s2")
    assert store.promote("kept/c", "kept/c") is True
    assert _read(store, "kept/c") == b"content"


def test_presign_get(store: BlobStore) -> None:
    _put(store, "uploads/doc", b"%PDF- the document")
    disposition = "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
    url = store.presign_get("uploads/doc", 60, disposition, "application/pdf")
    if store.scheme == "file":
        assert url is None  # the query process signs and serves local files itself
        return
    assert url is not None
    status, body, headers = _http("GET", url)
    assert (status, body) == (200, b"%PDF- the document")
    assert headers["Content-Type"] == "application/pdf"
    assert headers["Content-Disposition"] == disposition
    signature = dict(parse_qsl(urlsplit(url).query))["X-Amz-Signature"]
    forged = "0" if signature[-1] != "0" else "1"
    assert _http("GET", _with_query(url, **{"X-Amz-Signature": signature[:-1] + forged}))[0] == 403
    assert _http("GET", _with_query(url, **{"response-content-type": "text/html"}))[0] == 403
    assert _http("GET", url.replace("uploads/doc", "uploads/other"))[0] == 403


def test_presign_get_expires(store: BlobStore) -> None:
    _put(store, "uploads/brief", b"short-lived")
    url = store.presign_get("uploads/brief", 1, "attachment", "text/plain")
    if store.scheme == "file":
        assert url is None
        return
    assert url is not None
    time.sleep(2)
    assert _http("GET", url)[0] == 403


def test_presign_put(store: BlobStore) -> None:
    signed = store.presign_put("uploads/direct", 60, "image/png")
    if store.scheme == "file":
        assert signed is None  # the service takes the PUT itself
        return
    assert signed is not None
    url, headers = signed
    assert headers == {"Content-Type": "image/png"}
    assert _http("PUT", url, b"\x89PNG wrong type", {"Content-Type": "text/plain"})[0] == 403
    assert not store.exists("uploads/direct")
    assert _http("PUT", url, b"\x89PNG bytes", headers)[0] == 200
    assert _read(store, "uploads/direct") == b"\x89PNG bytes"


def test_sweep_removes_dead_uploads_and_abandoned_writers(store: BlobStore) -> None:
    for name in ("dead", "live"):
        _put(store, f"uploads/{name}", name.encode())
    _put(store, "kept/content", b"referenced")
    abandoned = store.writer("uploads/abandoned")  # a writer whose process died mid-upload
    abandoned.write(b"z" * (PART + 1))
    seen: list[str] = []

    def is_live(key: str) -> bool:
        seen.append(key)
        return key == "uploads/live"

    assert store.sweep(3600, is_live) == 0  # nothing is an hour old yet
    assert store.exists("uploads/dead")
    assert store.sweep(0, is_live) == 2  # uploads/dead and the abandoned writer's leftovers
    assert "uploads/dead" in seen and "uploads/live" in seen
    assert not store.exists("uploads/dead")
    assert store.exists("uploads/live") and store.exists("kept/content")
    assert store.sweep(0, is_live) == 0
    abandoned.abort()


def test_check_fails_when_the_store_is_gone(store: BlobStore, tmp_path: Path, prefix: str) -> None:
    store.check()
    if store.scheme == "file":
        shutil.rmtree(tmp_path / "files")
        with pytest.raises(BlobStoreError):
            store.check()
        return
    server = SeaweedS3(tmp_path / "short-lived")  # the shared server must stay up
    server.start()
    gone = open_blob_store(_s3_settings(server, prefix))
    try:
        gone.check()
        server.kill()
        with pytest.raises(BlobStoreError) as failure:
            gone.check()
        assert server.secret_key not in str(failure.value)
        with pytest.raises(BlobStoreError):
            _put(gone, "uploads/x", b"x")
    finally:
        gone.close()
        server.kill()


def test_s3_check_refuses_a_wrong_key_and_a_missing_bucket(seaweed: SeaweedS3, prefix: str) -> None:
    wrong = open_blob_store(_s3_settings(seaweed, prefix, secret_key="not-the-secret"))
    try:
        with pytest.raises(BlobStoreError) as failure:
            wrong.check()
        assert "403" in str(failure.value) or "SignatureDoesNotMatch" in str(failure.value)
        assert "not-the-secret" not in str(failure.value)
        with pytest.raises(BlobStoreError):
            _put(wrong, "uploads/x", b"x")
    finally:
        wrong.close()
    missing = open_blob_store(_s3_settings(seaweed, prefix, url=f"s3://no-such-bucket?endpoint={seaweed.endpoint}"))
    try:
        with pytest.raises(BlobStoreError, match="no-such-bucket"):
            missing.check()
    finally:
        missing.close()


def test_s3_url_forms() -> None:
    aws = S3BlobStore.open(FilesSettings(url="s3://bucket/a/b?region=eu-west-1", region="us-east-1"))
    assert aws.client.meta.region_name == "eu-west-1"
    aws.close()
    local = S3BlobStore.open(FilesSettings(url="s3://bucket?endpoint=http://127.0.0.1:9", region="us-east-2"))
    assert (local.client.meta.endpoint_url, local.client.meta.region_name) == ("http://127.0.0.1:9", "us-east-2")
    local.close()
    for url in ("s3:///prefix", "s3://bucket?endpont=http://x"):
        with pytest.raises(ValueError):
            S3BlobStore.open(FilesSettings(url=url))
    with pytest.raises(ValueError):
        S3BlobStore.open(FilesSettings(url="s3://bucket", access_key="only-half"))
