"""Helpers for the read-side tests: a client for port 8002, writes that
flush, and the shapes of API.md."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from testkit.service import Service, wait_for

BASE = "/api/v1/translation"
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
SUMMARY_FIELDS = {"session_id", "filename", "status", "total_tasks", "completed_tasks", "failed_tasks",
                  "processing_tasks", "pending_tasks", "progress", "created_at", "updated_at"}
DETAIL_FIELDS = SUMMARY_FIELDS | {"file_path", "llm_provider", "game_info", "metadata", "estimated_completion"}
TASK_FIELDS = {"task_id", "session_id", "batch_id", "sheet_name", "row_index", "column_name", "source_text",
               "target_text", "context", "status", "confidence", "error_message", "retry_count",
               "start_time", "end_time", "duration_ms", "created_at", "updated_at"}
PAGE_FIELDS = {"total", "page", "page_size", "total_pages", "items", "next_cursor"}


class Api:
    """The service under test, read through the query port (8002)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.query = httpx.Client(base_url=f"http://127.0.0.1:{service.query_port}", timeout=60)

    def wait_ready(self) -> None:
        wait_for(lambda: self.query.get(f"{BASE}/stats").status_code == 200, 30, "the query process")

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.query.get(BASE + path, params=params)

    def ok(self, path: str, **params: Any) -> Any:
        r = self.get(path, **params)
        assert r.status_code == 200, r.text
        return r.json()

    def write(self, sessions: Sequence[dict] = (), tasks: Sequence[dict] = (), flush: bool = True) -> None:
        for start in range(0, len(sessions), 1000):
            r = self.service.post_sessions(list(sessions[start:start + 1000]))
            assert r.status_code == 202, r.text
        for start in range(0, len(tasks), 1000):
            r = self.service.post_tasks(list(tasks[start:start + 1000]))
            assert r.status_code == 202, r.text
        if flush:
            r = self.service.flush()
            assert r.status_code == 200, r.text

    def close(self) -> None:
        self.query.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    assert ISO_Z.match(text), text
    return datetime.fromisoformat(text)


def walk(api: Api, path: str, page_size: int, **params: Any) -> list[dict]:
    """Every page of a list, by cursor; each page's own shape is checked."""
    items: list[dict] = []
    body = api.ok(path, page_size=page_size, **params)
    number = 1
    while True:
        assert body["page"] == number and len(body["items"]) <= page_size
        items += body["items"]
        if body["next_cursor"] is None:
            return items
        number += 1
        body = api.ok(path, page_size=page_size, cursor=body["next_cursor"], **params)
