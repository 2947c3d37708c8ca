"""Locust model of the translation backend that writes through this service.

Writers (most users) each run translation sessions the way the real backend
does: create the session, send its tasks in batches of 100 as pending, then
as processing, then as completed with target text (status updates of the same
keys), update the session's counters as they go, and finish the session.
Every few sessions a writer simulates its own restart: it flushes, then asks
recovery to restore the session and checks that the open tasks come back.
Readers (a few users) list sessions and poll a session's progress.

Every write carries an explicit, strictly increasing `updated_at`, so the
last acknowledged version of each key is known. With PS_LOCUST_LEDGER set,
the acknowledged writes are saved there as JSON when the run stops, for a
test to compare with the database.

Headless run (30 s, CSV stats in ./locust_*.csv):
    locust -f loadtests/locustfile.py --headless -u 20 -r 10 -t 30s \
        --host http://127.0.0.1:8001 --csv locust --only-summary
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
import uuid
from datetime import UTC, datetime

from locust import FastHttpUser, between, events, task

TASKS_PER_SESSION = int(os.environ.get("PS_LOCUST_TASKS_PER_SESSION", "300"))
BATCH = 100
RESTART_EVERY = 3  # sessions between simulated restarts
TEXT = "The hero returns to the village. 勇者は村に戻る。勇者回到了村庄。 "
JSON = {"content-type": "application/json"}

# key -> (version, status); sessions and tasks apart. One Locust process, gevent: no locks needed.
LEDGER: dict[str, dict[str, tuple[str, str]]] = {"sessions": {}, "tasks": {}}
FINISHED_SESSIONS: list[str] = []
_clock = itertools.count(int(time.time() * 1_000_000))


def _version() -> str:
    us = next(_clock)
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class TranslationBackend(FastHttpUser):
    weight = 4
    wait_time = between(0.01, 0.05)

    def on_start(self) -> None:
        self.sessions_done = 0

    @task
    def translate_one_file(self) -> None:
        session_id = str(uuid.uuid4())
        task_ids = [f"{session_id[:8]}-{i}" for i in range(TASKS_PER_SESSION)]
        counters = {"total_tasks": len(task_ids), "completed_tasks": 0, "processing_tasks": 0}
        self._session(session_id, "processing", counters)
        for status in ("pending", "processing", "completed"):
            for start in range(0, len(task_ids), BATCH):
                chunk = task_ids[start:start + BATCH]
                self._tasks(session_id, chunk, status)
                if status == "processing":
                    counters["processing_tasks"] = start + len(chunk)
                if status == "completed":
                    counters["processing_tasks"] = len(task_ids) - start - len(chunk)
                    counters["completed_tasks"] = start + len(chunk)
                self._session(session_id, "processing", counters)
        self._session(session_id, "completed", counters)
        FINISHED_SESSIONS.append(session_id)
        self.sessions_done += 1
        if self.sessions_done % RESTART_EVERY == 0:
            self._simulated_restart()

    def _simulated_restart(self) -> None:
        """After a crash the backend flushes, then restores an unfinished session."""
        session_id = str(uuid.uuid4())
        task_ids = [f"{session_id[:8]}-{i}" for i in range(BATCH)]
        self._session(session_id, "processing", {"total_tasks": BATCH})
        self._tasks(session_id, task_ids, "pending")
        self._tasks(session_id, task_ids[:40], "completed")
        with self.client.post("/api/v1/translation/flush", name="flush", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"flush answered {r.status_code}")
                return
        path = f"/api/v1/translation/recovery/restore/{session_id}"
        with self.client.post(path, name="/recovery/restore/[id]", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"restore answered {r.status_code}")
            elif r.json().get("tasks_count") != BATCH - 40:
                r.failure(f"restore returned {r.json().get('tasks_count')} open tasks, expected {BATCH - 40}")

    def _session(self, session_id: str, status: str, counters: dict[str, int]) -> None:
        version = _version()
        body = {"sessions": [{"session_id": session_id, "filename": "quest.xlsx", "file_path": "/files/quest.xlsx",
                              "status": status, "llm_provider": "openai", "updated_at": version,
                              "game_info": {"game_name": "Locust Quest", "target_language": "en"}, **counters}]}
        if self._post("/api/v1/translation/sessions/batch", body, "sessions/batch"):
            LEDGER["sessions"][session_id] = (version, status)

    def _tasks(self, session_id: str, task_ids: list[str], status: str) -> None:
        version = _version()
        body = {"tasks": [_task(task_id, session_id, status, version, i) for i, task_id in enumerate(task_ids)]}
        if self._post("/api/v1/translation/tasks/batch", body, "tasks/batch"):
            for task_id in task_ids:
                LEDGER["tasks"][task_id] = (version, status)

    def _post(self, path: str, body: dict, name: str) -> bool:
        with self.client.post(path, json=body, headers=JSON, name=name, catch_response=True) as r:
            if r.status_code != 202:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return False
            return True


def _task(task_id: str, session_id: str, status: str, version: str, row: int) -> dict:
    doc = {"task_id": task_id, "session_id": session_id, "batch_id": "b1", "sheet_name": "Dialogue",
           "row_index": row, "column_name": "text", "source_text": TEXT * 3, "status": status,
           "updated_at": version, "context": "NPC line"}
    if status == "completed":
        doc.update(target_text="The hero returns to the village.", confidence=0.93, duration_ms=850)
    return doc


class ProgressReader(FastHttpUser):
    weight = 1
    wait_time = between(0.05, 0.2)

    @task(3)
    def poll_progress(self) -> None:
        if not FINISHED_SESSIONS:
            return
        session_id = random.choice(FINISHED_SESSIONS)
        with self.client.get(f"/api/v1/translation/sessions/{session_id}", name="/sessions/[id]",
                             catch_response=True) as r:
            if r.status_code in (200, 404):  # 404: finished but not in the database yet
                r.success()
            else:
                r.failure(f"session detail answered {r.status_code}")

    @task(1)
    def list_sessions(self) -> None:
        self.client.get("/api/v1/translation/sessions?page_size=20", name="/sessions")

    @task(1)
    def health(self) -> None:
        self.client.get("/health", name="/health")


@events.test_stop.add_listener
def _flush_and_save(environment, **_kwargs) -> None:
    host = environment.host
    if host:
        import urllib.request
        request = urllib.request.Request(f"{host}/api/v1/translation/flush", method="POST")
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
    path = os.environ.get("PS_LOCUST_LEDGER")
    if path:
        with open(path, "w") as out:
            json.dump(LEDGER, out)
