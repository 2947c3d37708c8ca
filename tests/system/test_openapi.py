"""GET /openapi.json describes every endpoint of API.md with schemas
generated from the msgspec types; /docs renders it without the internet."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from core.settings import Settings
from ingest.app import ROUTES as INGEST_ROUTES
from query.app import create_app
from testkit.service import Service, session, task

# The headings `### METHOD /path` of API.md (shared/ may be absent in a run, so they are listed here).
API_MD = [
    ("post", "/api/v1/translation/sessions/batch"),
    ("post", "/api/v1/translation/tasks/batch"),
    ("post", "/api/v1/translation/flush"),
    ("get", "/api/v1/translation/sessions"),
    ("get", "/api/v1/translation/sessions/{session_id}"),
    ("get", "/api/v1/translation/sessions/{session_id}/tasks"),
    ("get", "/api/v1/translation/tasks/{task_id}"),
    ("get", "/api/v1/translation/tasks"),
    ("get", "/api/v1/translation/recovery/incomplete-sessions"),
    ("post", "/api/v1/translation/recovery/restore/{session_id}"),
    ("get", "/api/v1/translation/recovery/status"),
    ("delete", "/api/v1/translation/sessions/{session_id}"),
    ("patch", "/api/v1/translation/sessions/{session_id}/status"),
    ("post", "/api/v1/translation/sessions/cleanup"),
    ("get", "/api/v1/translation/stats"),
    ("get", "/health"),
    ("get", "/metrics"),
    ("get", "/api/v1/system/metrics"),
    ("get", "/api/v1/system/config"),
]
_ASSET_URL = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//|url\(\s*["']?(https?:)?//|https?://""", re.IGNORECASE)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("openapi")
    service = Service(folder, f"sqlite:///{folder / 'store.db'}")
    service.start()
    yield service
    service.kill()


@pytest.fixture(scope="module")
def document(service: Service) -> dict[str, Any]:
    answer = service.http.get("/openapi.json")  # port 8001, through the proxy
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    direct = service.http.get(f"http://127.0.0.1:{service.query_port}/openapi.json")
    assert direct.content == answer.content
    return answer.json()


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.1")


def test_every_path_of_api_md_is_described(document: dict[str, Any]) -> None:
    described = {(method, path) for path, item in document["paths"].items() for method in item}
    assert set(API_MD) - described == set()


def test_every_route_is_described_and_every_description_is_routed(document: dict[str, Any]) -> None:
    routes = [r for r in [*INGEST_ROUTES, *create_app(Settings()).routes] if isinstance(r, Route)]
    routed = {(m.lower(), r.path) for r in routes for m in (r.methods or ()) if m != "HEAD"}
    described = {(method, path) for path, item in document["paths"].items() for method in item}
    # Starlette answers HEAD on every GET route; the document names it where HEAD is part of the contract.
    heads = {(method, path) for method, path in described if method == "head"}
    assert {("get", path) for _, path in heads} <= routed
    assert routed == described - heads


def test_schemas_come_from_the_msgspec_types(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert {"SessionBatch", "Session", "TaskBatch", "Task", "StatusChange", "Cleanup", "ErrorBody"} <= set(schemas)
    batch = document["paths"]["/api/v1/translation/tasks/batch"]["post"]
    assert batch["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/TaskBatch"}
    assert schemas["TaskBatch"]["properties"]["tasks"]["maxItems"] == 1000
    assert sorted(schemas["Task"]["properties"]["status"]["enum"]) == ["completed", "failed", "pending", "processing"]
    assert set(schemas["ErrorBody"]["required"]) == {"detail", "error_code"}
    assert batch["responses"]["422"] == {"$ref": "#/components/responses/Error422"}
    listing = document["paths"]["/api/v1/translation/sessions"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {"status", "from_date", "to_date", "page", "page_size",
                                                          "sort_by", "order", "cursor"}


def _check(document: dict[str, Any], schema_name: str, body: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


def test_real_answers_match_their_schemas(service: Service, document: dict[str, Any]) -> None:
    assert service.post_sessions([session("s-1", total_tasks=2)]).status_code == 202
    assert service.post_tasks([task("t-1", "s-1"), task("t-2", "s-1", status="completed")]).status_code == 202
    flushed = service.flush()
    _check(document, "FlushResult", flushed.json())
    http = service.http
    _check(document, "Health", http.get("/health").json())
    _check(document, "Settings", http.get("/api/v1/system/config").json())
    _check(document, "ListPage_SessionSummary_", http.get("/api/v1/translation/sessions").json())
    _check(document, "SessionDetail", http.get("/api/v1/translation/sessions/s-1").json())
    _check(document, "SessionTaskPage_TaskView_", http.get("/api/v1/translation/sessions/s-1/tasks").json())
    _check(document, "ListPage_TaskView_", http.get("/api/v1/translation/tasks").json())
    _check(document, "TaskView", http.get("/api/v1/translation/tasks/t-1").json())
    _check(document, "IncompleteSessions", http.get("/api/v1/translation/recovery/incomplete-sessions").json())
    _check(document, "Restored", http.post("/api/v1/translation/recovery/restore/s-1").json())
    _check(document, "RecoveryStatus", http.get("/api/v1/translation/recovery/status").json())
    _check(document, "Stats", http.get("/api/v1/translation/stats").json())
    _check(document, "DeadLetterPage", http.get("/api/v1/system/dead-letters").json())
    _check(document, "StatusUpdated", http.patch("/api/v1/translation/sessions/s-1/status",
                                                 json={"status": "completed"}).json())
    _check(document, "CleanupResult", http.post("/api/v1/translation/sessions/cleanup", json={"dry_run": True}).json())
    _check(document, "Deleted", http.request("DELETE", "/api/v1/translation/sessions/s-1").json())
    _check(document, "ErrorBody", http.get("/api/v1/translation/sessions/nope").json())
    _check(document, "ErrorBody", http.post("/api/v1/translation/tasks/batch", json={"tasks": []}).json())


def test_docs_page_needs_no_internet(service: Service) -> None:
    for base in ("", f"http://127.0.0.1:{service.query_port}"):
        answer = service.http.get(f"{base}/docs")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/html")
        assert "<script>" in answer.text and 'fetch("openapi.json"' in answer.text
        assert not _ASSET_URL.search(answer.text), _ASSET_URL.search(answer.text)


def test_docs_page_ships_with_the_package() -> None:
    import query
    assert (Path(query.__file__).parent / "docs.html").is_file()
