"""The user cache is never stale: with two query workers each keeping
entries, readers that start after a write has answered never see the value
it replaced, whichever worker answers them (memory cache with the machine's
shared epochs, and the Redis cache)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.users.conftest import USER_SESSIONS, USERS, new_user, users_toml

RUN_S = 6.0
READERS = 4


@pytest.mark.parametrize("cache", ["memory", "redis"])
def test_no_read_after_a_completed_write_returns_the_old_value(service_factory, tmp_path: Path, cache: str,
                                                               request: pytest.FixtureRequest) -> None:
    cache_url = request.getfixturevalue("shared_redis") if cache == "redis" else "memory"
    service = service_factory(f"sqlite:///{tmp_path / 'store.db'}", query_workers=2,
                              extra_toml=users_toml(f"sqlite:///{tmp_path / 'sessions.db'}", cache_url))
    user = new_user(service, "ann", display_name="v0")
    token = service.http.post(USER_SESSIONS, json={"user_id": user["user_id"]}).json()["token"]
    url = f"{USERS}/{user['user_id']}"
    completed = [0]  # the highest version whose PATCH has answered
    stale: list[str] = []
    reads = [0]
    stop = threading.Event()

    def write() -> None:
        with httpx.Client(base_url=str(service.http.base_url), timeout=10) as http:
            version = 0
            while not stop.is_set():
                version += 1
                answer = http.patch(url, json={"display_name": f"v{version}"})
                assert answer.status_code == 200, answer.text
                completed[0] = version

    def read(use_session: bool) -> None:
        with httpx.Client(base_url=str(service.http.base_url), timeout=10) as http:
            while not stop.is_set():
                floor = completed[0]  # every write up to this one answered before this read started
                if use_session:
                    answer = http.post(f"{USER_SESSIONS}/validate", json={"token": token})
                    seen = answer.json()["user"]["display_name"]
                else:
                    answer = http.get(url)
                    seen = answer.json()["display_name"]
                assert answer.status_code == 200, answer.text
                reads[0] += 1
                if int(seen[1:]) < floor:
                    stale.append(f"read {seen} after v{floor} had answered")

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read, args=(i % 2 == 0,))
                                                  for i in range(READERS)]
    for thread in threads:
        thread.start()
    time.sleep(RUN_S)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert completed[0] > 20 and reads[0] > 200, (completed[0], reads[0])
    assert not stale, stale[:5]
    metrics = service.http.get("/metrics").text
    hits = float(metrics.split('persistence_user_cache_total{result="hit"} ')[1].split()[0])
    assert hits > 0  # the cache was in use, not bypassed
