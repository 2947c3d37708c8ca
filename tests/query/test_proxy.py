"""Port 8001 answers the read paths too: the ingest app passes them on to the
query process. The answers must be the same bytes as on 8002."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator, MutableMapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from core.settings import QuerySettings
import ingest.proxy
from ingest.proxy import QueryProxy
from testkit.service import free_port, session, task
from tests.query.support import BASE, Api, now_iso, unique


def test_8001_and_8002_answer_reads_identically(api: Api) -> None:
    sid = unique("px")
    start = now_iso()
    api.write(sessions=[session(sid, status="completed", game_info={"名": "值"}), session(unique("py"))],
              tasks=[task(f"{sid}-{i}", sid, row_index=i, status=["pending", "failed"][i % 2]) for i in range(30)])
    paths = [
        ("/sessions", {"from_date": start, "page_size": "1"}),
        ("/sessions", {"from_date": start, "sort_by": "updated_at", "order": "asc"}),
        (f"/sessions/{sid}", {}),  # completed: estimated_completion is null, so nothing depends on now
        (f"/sessions/{sid}/tasks", {"status": "failed", "page_size": "4", "page": "2"}),
        (f"/tasks/{sid}-3", {}),
        ("/tasks", {"session_id": sid, "page_size": "7"}),
        ("/recovery/incomplete-sessions", {}),
        ("/sessions/nope", {}), ("/tasks/nope", {}),
        ("/sessions", {"page": "0", "order": "sideways"}),
        ("/tasks", {"session_id": "中文 & ?/#", "status": "pending"}),
    ]
    for path, params in paths:
        direct = api.query.get(BASE + path, params=params)
        proxied = api.service.http.get(BASE + path, params=params)
        assert (proxied.status_code, proxied.content) == (direct.status_code, direct.content), path
        assert proxied.headers["content-type"] == direct.headers["content-type"]
    stats = [port.get(BASE + "/stats").json() for port in (api.query, api.service.http)]
    assert [{k: v for k, v in body.items() if k != "computed_at"} for body in stats] == [
        {k: v for k, v in stats[0].items() if k != "computed_at"}] * 2
    cursor = api.ok("/sessions", from_date=start, page_size=1)["next_cursor"]
    proxied = api.service.http.get(BASE + "/sessions", params={"from_date": start, "page_size": 1, "cursor": cursor})
    assert proxied.json() == api.ok("/sessions", from_date=start, page_size=1, cursor=cursor)


def test_restore_through_8001(api: Api) -> None:
    sid = unique("pr")
    api.write(sessions=[session(sid)], tasks=[task(f"{sid}-{i}", sid, row_index=i) for i in range(1500)])
    proxied = api.service.http.post(f"{BASE}/recovery/restore/{sid}")
    direct = api.query.post(f"{BASE}/recovery/restore/{sid}")
    assert proxied.status_code == direct.status_code == 200
    a, b = proxied.json(), direct.json()
    for body in (a, b):
        body.pop("restored_at")
        body["session"].pop("estimated_completion")
    assert a == b and a["tasks_count"] == 1500


def test_request_ids_pass_through_8001_once(api: Api) -> None:
    """The query process gives a proxied read its request id; 8001 adds no second one."""
    mine = api.service.http.get(f"{BASE}/sessions/nope", headers={"X-Request-ID": "client-id-1"})
    assert mine.status_code == 404 and mine.headers.get_list("x-request-id") == ["client-id-1"]
    fresh = [api.service.http.get(f"{BASE}/sessions/nope").headers.get_list("x-request-id") for _ in range(2)]
    assert all(len(ids) == 1 and re.fullmatch(r"[0-9a-f]{32}", ids[0]) for ids in fresh)
    assert fresh[0] != fresh[1]
    unsafe = api.service.http.get(f"{BASE}/sessions/nope", headers={"X-Request-ID": "bad id\twith spaces"})
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"


def test_write_paths_keep_their_own_errors_on_8001(api: Api) -> None:
    r = api.service.http.get(f"{BASE}/flush")
    assert r.status_code == 405 and r.json()["error_code"] == "METHOD_NOT_ALLOWED"
    r = api.service.http.get("/no/such/path")
    assert r.status_code == 404 and r.json()["error_code"] == "NOT_FOUND"


# -- the proxy alone, in front of a plain HTTP server -------------------------

STALL_S = 3.0

class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode()
        if self.path == "/teapot":
            self._send(418, b'{"short": "and stout"}')
            return
        if self.path == "/stall":  # a query process that hangs before answering
            time.sleep(STALL_S)
            return
        if self.path == "/stall-body":  # one that hangs half way through its answer
            self.send_response(200)
            self.send_header("content-length", "100")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
            time.sleep(STALL_S)
            return
        echo = {"method": self.command, "path": self.path, "body": body,
                "headers": {k.lower(): v for k, v in self.headers.items()}}
        self._send(200, json.dumps(echo).encode())

    def _send(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("x-upstream", "yes")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


async def _through_proxy(port: int, requests: list[tuple[str, str, dict]]) -> list[httpx.Response]:
    """Send requests to an app whose router passes unknown paths to `port`."""
    proxy = QueryProxy(QuerySettings(port=port), max_body_bytes=1024)

    async def own(request: Request) -> Response:
        return PlainTextResponse("own route")

    app = Starlette(routes=[Route("/own", own, methods=["POST"])])
    app.router.default = proxy
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as client:
            return [await client.request(method, url, **kwargs) for method, url, kwargs in requests]
    finally:
        await proxy.aclose()


def test_proxy_forwards_method_path_query_headers_and_body(echo_port: int) -> None:
    path = "/api/v1/x%2Fy/%E4%B8%AD?a=1&a=2&b=%2B08:00"
    r, teapot, own, own_get, too_big = asyncio.run(_through_proxy(echo_port, [
        ("PATCH", path, {"content": b'{"status": "failed"}',
                         "headers": {"x-request-id": "r-1", "content-type": "application/json"}}),
        ("GET", "/teapot", {}), ("POST", "/own", {}), ("GET", "/own", {}),
        ("POST", "/x", {"content": b"x" * 2048}),
    ]))
    assert r.status_code == 200 and r.headers["x-upstream"] == "yes"
    echo = r.json()
    assert (echo["method"], echo["path"], echo["body"]) == ("PATCH", path, '{"status": "failed"}')
    assert echo["headers"]["x-request-id"] == "r-1"
    assert echo["headers"]["content-type"] == "application/json"
    assert echo["headers"]["host"] == f"127.0.0.1:{echo_port}"
    assert (teapot.status_code, teapot.json()) == (418, {"short": "and stout"})
    assert own.text == "own route"
    assert own_get.status_code == 405  # a route's wrong method is not passed on
    assert too_big.status_code == 413 and too_big.json()["error_code"] == "PAYLOAD_TOO_LARGE"


def test_query_process_down_is_503() -> None:
    answers = asyncio.run(_through_proxy(free_port(), [("GET", f"{BASE}/sessions", {}),
                                                       ("POST", f"{BASE}/recovery/restore/x", {})]))
    for r in answers:
        assert r.status_code == 503, r.text
        assert r.json()["error_code"] == "QUERY_UNAVAILABLE" and r.headers["retry-after"]


def test_a_hung_query_process_is_504_and_a_stalled_answer_is_cut_off(echo_port: int,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest.proxy, "READ_TIMEOUT_S", 0.5)
    started = time.monotonic()
    hung, = asyncio.run(_through_proxy(echo_port, [("GET", "/stall", {})]))
    assert hung.status_code == 504 and hung.json()["error_code"] == "QUERY_TIMEOUT"
    assert hung.headers["x-request-id"]

    # The 200 is out when the answer stalls: the body must end unfinished (the
    # server then drops the connection), never look complete or turn into a 504.
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def stalled() -> None:
        proxy = QueryProxy(QuerySettings(port=echo_port), max_body_bytes=1024)
        scope = {"type": "http", "method": "GET", "path": "/stall-body", "raw_path": b"/stall-body",
                 "query_string": b"", "headers": [], "client": ("127.0.0.1", 1)}
        await proxy(scope, receive, send)
        await proxy.aclose()

    asyncio.run(stalled())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert not any(m["type"] == "http.response.body" and not m.get("more_body") for m in sent)
    assert time.monotonic() - started < 2 * STALL_S
