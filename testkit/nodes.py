"""Several full service nodes behind HAProxy on one machine, and a client
that writes versioned updates through the one URL, for tests and the
several-nodes drill (loadtests/drill_nodes.py).

Node i binds 127.0.0.i (Linux answers on all of 127/8), each with its own
folder, spool and config; they share the sink, and whatever shared stores
extra_toml names (S3 files, Redis sessions and cache)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from testkit.haproxy import NODES, Haproxy
from testkit.service import TASKS, Service, task

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def version_time(version: int) -> str:
    """updated_at for a version: one millisecond per version, so versions order like times."""
    return (EPOCH + timedelta(milliseconds=version)).isoformat().replace("+00:00", "Z")


class Nodes:
    def __init__(self, folder: Path, sink_url: str, count: int = NODES, **overrides: Any) -> None:
        assert 1 <= count <= NODES
        self.services = [Service(folder / f"node{i + 1}", sink_url, host=f"127.0.0.{i + 1}", **overrides)
                         for i in range(count)]
        for i, service in enumerate(self.services):
            service.env["PS_SINK_NODE_ID"] = str(i + 1)  # node i+1 wins ties in updated_at over lower ones
        # The shipped config names three servers: with fewer nodes some are named twice.
        addresses = [f"{s.host}:{s.ingest_port}" for s in self.services]
        self.proxy = Haproxy(folder / "haproxy", [addresses[i % count] for i in range(NODES)])

    def start(self) -> None:
        for service in self.services:
            service.start(wait=False)
        for service in self.services:
            service.wait_ready()
        self.proxy.start()
        for i in range(len(self.services)):
            self.proxy.wait_state(f"node{i + 1}", "UP")

    def client(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.proxy.url, timeout=timeout)

    def flush_all(self) -> None:
        for service in self.services:
            answer = service.flush()
            assert answer.status_code == 200, f"{service.host}: {answer.text}"

    def stop(self) -> None:
        self.proxy.stop()
        for service in self.services:
            service.kill()


class VersionWriter(threading.Thread):
    """Updates the same tasks over and over through one URL with growing
    versions (updated_at; target_text "v<version>"), remembering per task the
    last version acknowledged (202) and the highest sent. Anything else (a
    502 from a node killed mid-request, 429/503 back-pressure, a reset) is
    not acknowledged and is simply followed by newer versions, as a client
    that retries would."""

    def __init__(self, url: str, session_id: str, task_ids: list[str], batch: int = 100,
                 pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=url, timeout=30)
        self.session_id, self.task_ids, self.batch, self.pause = session_id, task_ids, batch, pause
        self.acked: dict[str, int] = {}
        self.sent: dict[str, int] = {}
        self.by_node: dict[str, int] = {}  # acknowledged requests per node (X-Served-By)
        self.refused: dict[str, int] = {}  # other answers and errors, by status or error name
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.version = 0
        self.requests = 0
        self.rows = 0

    def run(self) -> None:
        stride = max(1, len(self.task_ids) // self.batch)
        while not self.stop.is_set():
            chosen = self.task_ids[self.version % stride::stride][:self.batch]
            batch = {}
            for task_id in chosen:
                self.version += 1
                batch[task_id] = self.version
            with self.lock:
                self.sent.update(batch)
            body = {"tasks": [task(t, self.session_id, target_text=f"v{v}", status="completed",
                                   updated_at=version_time(v)) for t, v in batch.items()]}
            try:
                answer = self.http.post(TASKS, json=body)
            except httpx.HTTPError as exc:
                self._refused(type(exc).__name__)
                continue
            if answer.status_code != 202:
                self._refused(str(answer.status_code))
                if answer.status_code in (429, 503):
                    time.sleep(min(float(answer.headers.get("retry-after", "1")), 1.0))
                continue
            node = answer.headers.get("x-served-by", "?")
            with self.lock:
                self.acked.update(batch)
                self.requests += 1
                self.rows += len(batch)
                self.by_node[node] = self.by_node.get(node, 0) + 1
            if self.pause:
                time.sleep(self.pause)
        self.http.close()

    def _refused(self, what: str) -> None:
        with self.lock:
            self.refused[what] = self.refused.get(what, 0) + 1

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        with self.lock:
            return dict(self.acked), dict(self.sent)

    def wrong(self, stored: dict[str, str]) -> dict[str, tuple[str | None, int | None, int | None]]:
        """Tasks whose stored version is not between the last acknowledged and the highest sent (a lost
        acknowledged write, or a version no request carried)."""
        acked, sent = self.snapshot()
        out: dict[str, tuple[str | None, int | None, int | None]] = {}
        for task_id in self.task_ids:
            text = stored.get(task_id)
            version = int(text[1:]) if text and text.startswith("v") else 0
            if not acked.get(task_id, 0) <= version <= sent.get(task_id, 0):
                out[task_id] = (text, acked.get(task_id), sent.get(task_id))
        return out
