"""Redis restarts under load: the service heals by itself. Login sessions
validate again within seconds of Redis coming back, and meanwhile clients
get 503 + Retry-After, never a 500."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from testkit.redis_server import RedisServer
from tests.users.conftest import USER_SESSIONS, new_user, users_toml

SESSIONS = 5
HEAL_S = 5.0


def test_a_redis_restart_mid_traffic_heals_by_itself(service_factory, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", persistent=True)  # a kill -9 keeps the sessions (AOF, fsync always)
    server.start()
    try:
        service = service_factory(f"sqlite:///{tmp_path / 'store.db'}", query_workers=2,
                                  extra_toml=users_toml(server.url, cache_url=server.url.replace("/0", "/1")))
        user = new_user(service, "ann")
        tokens = [service.http.post(USER_SESSIONS, json={"user_id": user["user_id"]}).json()["token"]
                  for _ in range(SESSIONS)]
        outcomes: list[tuple[float, int, str]] = []
        stop = threading.Event()

        def validate(index: int) -> None:
            with httpx.Client(base_url=str(service.http.base_url), timeout=10) as http:
                while not stop.is_set():
                    answer = http.post(f"{USER_SESSIONS}/validate", json={"token": tokens[index % SESSIONS]})
                    code = answer.json().get("error_code", "") if answer.status_code != 200 else ""
                    if answer.status_code == 503:
                        assert answer.headers.get("Retry-After")
                    outcomes.append((time.monotonic(), answer.status_code, code))

        threads = [threading.Thread(target=validate, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        killed_at = time.monotonic()
        server.restart(down_s=1.5)
        back_at = time.monotonic()
        time.sleep(HEAL_S + 2)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        statuses = Counter(status for _, status, _ in outcomes)
        assert set(statuses) <= {200, 503}, statuses  # never a 500, never a session lost (401)
        assert {code for _, status, code in outcomes if status == 503} <= {"SESSION_STORE_UNAVAILABLE"}
        assert any(status == 503 for _, status, _ in outcomes), "the outage was not seen: the test proves nothing"
        assert any(status == 200 for at, status, _ in outcomes if at < killed_at)
        healed = [at for at, status, _ in outcomes if at > back_at and status == 200]
        assert healed and healed[0] - back_at < HEAL_S, "no validation succeeded within 5 s of Redis coming back"
        late = [status for at, status, _ in outcomes if at > back_at + HEAL_S]
        assert late and set(late) == {200}, Counter(late)
        for token in tokens:
            assert service.http.post(f"{USER_SESSIONS}/validate", json={"token": token}).status_code == 200
    finally:
        server.kill()
