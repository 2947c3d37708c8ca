"""Uploads that go wrong: too large, a client that goes away mid-body, the
service killed mid-upload. Each leaves no visible file and no bytes behind."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from testkit.procs import descendants
from testkit.service import Service, wait_for
from tests.files.conftest import StoreView

FILES = "/api/v1/files"
LIMIT = 1024 * 1024


def _raw_upload_head(service: Service, length: int | None, filename: str = "big.bin") -> bytes:
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    return (f"POST {FILES}?filename={filename} HTTP/1.1\r\nhost: 127.0.0.1:{service.ingest_port}\r\n"
            f"content-type: application/octet-stream\r\n{framing}\r\n\r\n").encode()


def _answer(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_oversize_is_refused_before_the_body_is_read(files_factory, store_view: StoreView) -> None:
    service = files_factory(f"max_bytes = {LIMIT}\n")
    # Declared too large: 413 at once, though not one byte of the body was sent.
    with socket.create_connection(("127.0.0.1", service.ingest_port)) as sock:
        sock.sendall(_raw_upload_head(service, 50 * LIMIT))
        started = time.monotonic()
        answer = _answer(sock)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert time.monotonic() - started < 5
    # Not declared (chunked): refused once the limit is passed, while the client still sends.
    with socket.create_connection(("127.0.0.1", service.ingest_port)) as sock:
        sock.sendall(_raw_upload_head(service, None))
        chunk = os.urandom(64 * 1024)
        answer = b""
        sock.settimeout(0.2)
        for _ in range(200):  # up to 12.5 MB offered; the limit is 1 MB
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                break  # the service closed the connection after answering
            try:
                answer = sock.recv(65536)
                if answer:
                    break
            except TimeoutError:
                continue
        answer = answer or _answer(sock)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    body = service.http.post(FILES, params={"filename": "x"}, content=b"y" * (LIMIT + 1))
    assert body.status_code == 413 and body.json()["error_code"] == "PAYLOAD_TOO_LARGE", service.tail()
    assert service.http.post(FILES, params={"filename": "x"}, content=b"y" * LIMIT).status_code == 201
    assert len(service.http.get(FILES).json()["items"]) == 1
    wait_for(lambda: len(store_view.objects()) == 1, 10, "only the accepted file's bytes to remain")
    metrics = service.http.get("/metrics").text
    assert 'persistence_file_uploads_total{outcome="too_large"} 3.0' in metrics


def test_a_client_that_goes_away_mid_upload_leaves_nothing(files_service: Service, store_view: StoreView) -> None:
    for port in (files_service.ingest_port, files_service.query_port):  # through the relay, and direct
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_raw_upload_head(files_service, 20 * LIMIT))
            for _ in range(24):  # 3 MB of 20
                sock.sendall(os.urandom(128 * 1024))
            time.sleep(0.3)
        # The bytes written so far are dropped when the service sees the client gone.
        wait_for(lambda: store_view.objects() == [], 15, "the partial upload to be dropped")
    assert files_service.http.get(FILES).json()["items"] == []
    assert files_service.http.post(FILES, params={"filename": "ok.txt"}, content=b"ok").status_code == 201


@pytest.mark.parametrize("store_kind", ["local"], indirect=True)
def test_kill_9_mid_upload_leaves_no_file_and_no_temp_bytes_after_restart(files_service: Service,
                                                                          store_view: StoreView) -> None:
    sock = socket.create_connection(("127.0.0.1", files_service.query_port))
    sock.sendall(_raw_upload_head(files_service, 50 * LIMIT))
    for _ in range(40):
        sock.sendall(os.urandom(128 * 1024))
    wait_for(lambda: any(k.startswith("tmp/") for k in store_view.objects()), 10, "the upload's temp file")
    assert files_service.proc is not None
    for pid in [files_service.proc.pid, *descendants(files_service.proc.pid)]:
        os.kill(pid, signal.SIGKILL)
    files_service.proc.wait(10)
    sock.close()
    assert any(k.startswith("tmp/") for k in store_view.objects())  # what the kill left
    files_service.start()
    wait_for(lambda: store_view.objects() == [], 20, "the dead upload's temp file to be swept at start")
    assert files_service.http.get(FILES).json()["items"] == []
