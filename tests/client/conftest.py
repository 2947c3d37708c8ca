"""One real service (SQLite sink, local file store, SQLite login sessions)
shared by a test module's client tests, and a client pointed at it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from persistence_api.translation import Session, Task
from persistence_client import PersistenceClient
from testkit.service import Service

FAST_HASH = "[users]\nhash_time_cost = 1\nhash_memory_kib = 8192\n"


@pytest.fixture(scope="module")
def shared_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("client-service")
    service = Service(folder / "svc", f"sqlite:///{folder / 'store.db'}", extra_toml=FAST_HASH)
    service.start()
    yield service
    service.kill()


@pytest.fixture
def client(shared_service: Service) -> Iterator[PersistenceClient]:
    client = PersistenceClient(f"http://127.0.0.1:{shared_service.ingest_port}", flush_interval=0.05)
    yield client
    client.close()


def base_url(service: Service) -> str:
    return f"http://127.0.0.1:{service.ingest_port}"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def a_session(session_id: str, status: str = "processing", **fields: object) -> Session:
    return Session(session_id, f"{session_id}.xlsx", f"/in/{session_id}.xlsx", status,  # type: ignore[arg-type]
                   "openai", **fields)  # type: ignore[arg-type]


def a_task(task_id: str, session_id: str, row: int, status: str = "pending", **fields: object) -> Task:
    return Task(task_id, session_id, "b1", "Sheet1", row, "A", f"source {row}: \"quoted\" [x] {{y}} 翻译\\n",
                status, **fields)  # type: ignore[arg-type]


def stored_task_ids(sink_db: Path, session_id: str) -> set[str]:
    import sqlite3
    with sqlite3.connect(sink_db) as db:
        return {row[0] for row in db.execute("SELECT task_id FROM translation_tasks WHERE session_id = ?",
                                             (session_id,))}
