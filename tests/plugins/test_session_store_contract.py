"""One contract, every session store: Redis (the shared server on
127.0.0.1:6379, in a database of these tests' own, emptied before and after)
and the embedded SQLite file. Adding a store means adding a parameter to the
`store` fixture; what only one store can do is asserted per scheme.

Times are passed explicitly, so sliding and expiry need no sleeping; they
start from the real clock because Redis TTLs run in real time.
"""

from __future__ import annotations

import hashlib
import itertools
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from core.times import now_us
from plugins.sessions import (
    Failures,
    SessionRecord,
    SessionStore,
    SessionStoreError,
    open_session_store,
    touch_granularity,
)
from plugins.sessions.redis import RedisSessionStore
from testkit.redis_server import RedisServer
from tests.conftest import SHARED_REDIS

S = 1_000_000  # µs per second
HOUR = 3600 * S
IDLE = 600 * S  # a 10 min window: the slide is written from 6 s on


@pytest.fixture(params=["redis", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    if request.param == "redis":
        url = request.getfixturevalue("shared_redis")
    else:
        url = f"sqlite:///{tmp_path / 'made' / 'by-the-store' / 'sessions.db'}"
    store = open_session_store(url, connect_timeout=2.0)
    yield store
    store.close()


def _hash() -> str:
    return hashlib.sha256(uuid.uuid4().bytes).hexdigest()


def _record(t0: int, user_id: str = "u1", ttl: int = HOUR, idle: int = IDLE, **fields: Any) -> SessionRecord:
    values: dict[str, Any] = {"session_id": str(uuid.uuid4()), "user_id": user_id, "created_us": t0,
                              "expires_us": t0 + ttl, "idle_us": idle, "idle_expires_us": min(t0 + idle, t0 + ttl),
                              "last_seen_us": t0, "ip": "203.0.113.9", "user_agent": "test/1.0",
                              "data": {"theme": "dark", "n": [1, 2]}}
    return SessionRecord(**(values | fields))


def _new(store: SessionStore, t0: int, **fields: Any) -> tuple[str, SessionRecord]:
    token_hash, record = _hash(), _record(t0, **fields)
    store.create(token_hash, record)
    return token_hash, record


def _raw_redis() -> redis.Redis:
    return redis.Redis.from_url(SHARED_REDIS)


def test_create_then_touch_returns_the_record_and_slides(store: SessionStore) -> None:
    t0 = now_us()
    token_hash, record = _new(store, t0)
    assert store.touch(token_hash, t0) == record  # nothing to slide yet
    later = t0 + 10 * S
    slid = store.touch(token_hash, later)
    assert slid == _record(t0, session_id=record.session_id, idle_expires_us=later + IDLE, last_seen_us=later)
    assert store.touch(token_hash, later + S) == slid  # what is stored: the slide was written
    assert store.touch(_hash(), later) is None  # unknown
    if store.scheme == "redis":  # the key lives as long as the session (Redis expires it)
        client = _raw_redis()
        pttl = client.pttl(f"ps:us:t:{token_hash}")
        assert IDLE // 1000 - 2000 < pttl <= IDLE // 1000  # expiry - the touch's now
        assert abs(client.pttl(f"ps:us:i:{record.session_id}") - pttl) < 2000
        assert client.zscore("ps:us:z", token_hash) == later + IDLE
        client.close()


def test_no_slide_is_written_under_the_granularity(store: SessionStore) -> None:
    t0 = now_us()
    token_hash, record = _new(store, t0)
    step = touch_granularity(IDLE)
    assert step == 6 * S
    assert store.touch(token_hash, t0 + step - 1) == record  # read only: last_seen and idle expiry unchanged
    assert store.touch(token_hash, t0 + step - 1) == record
    moved = store.touch(token_hash, t0 + step)
    assert moved is not None
    assert (moved.idle_expires_us, moved.last_seen_us) == (t0 + step + IDLE, t0 + step)
    assert store.touch(token_hash, t0 + 2 * step - 1) == moved  # measured from the written slide


def test_the_absolute_expiry_caps_the_slide(store: SessionStore) -> None:
    t0 = now_us()
    token_hash, _ = _new(store, t0, ttl=100 * S, idle=60 * S)
    capped = store.touch(token_hash, t0 + 50 * S)
    assert capped is not None and capped.idle_expires_us == capped.expires_us == t0 + 100 * S
    assert store.touch(token_hash, t0 + 99 * S) == capped  # nothing left to slide
    assert store.touch(token_hash, t0 + 100 * S) is None


def test_expired_sessions_are_gone(store: SessionStore) -> None:
    t0 = now_us()
    idle_hash, _ = _new(store, t0, idle=60 * S)
    assert store.touch(idle_hash, t0 + S // 2) is not None  # under the granularity (0.6 s): not written...
    assert store.touch(idle_hash, t0 + 60 * S) is None  # ...so the idle window still ends at t0 + 60 s
    absolute_hash, _ = _new(store, t0, ttl=30 * S, idle=60 * S)
    assert store.touch(absolute_hash, t0 + 29 * S) is not None
    assert store.touch(absolute_hash, t0 + 30 * S) is None
    # A record whose idle expiry was not capped: the absolute one still counts.
    uncapped_hash, _ = _new(store, t0, ttl=20 * S, idle=60 * S, idle_expires_us=t0 + 60 * S)
    assert store.touch(uncapped_hash, t0 + 20 * S) is None
    assert store.set_data(idle_hash, {"x": 1}, t0 + 61 * S) is None
    assert store.list_user("u1", t0 + 61 * S) == []


def test_revoke_and_revoke_id(store: SessionStore) -> None:
    t0 = now_us()
    first, _ = _new(store, t0)
    second, record = _new(store, t0)
    assert store.revoke(first) is True
    assert store.revoke(first) is False
    assert store.touch(first, t0) is None
    assert store.revoke_id(record.session_id) is True
    assert store.revoke_id(record.session_id) is False
    assert store.touch(second, t0) is None
    assert store.revoke(_hash()) is False
    assert store.revoke_id(str(uuid.uuid4())) is False
    assert store.count_active(t0) == 0
    if store.scheme == "redis":  # every index entry went with the sessions
        client = _raw_redis()
        assert client.keys("ps:us:*") == []
        client.close()


def test_revoke_user_counts_and_spares_other_users(store: SessionStore) -> None:
    t0 = now_us()
    mine = [_new(store, t0, user_id="alice")[0] for _ in range(3)]
    other, _ = _new(store, t0, user_id="bob")
    assert store.revoke_user("alice") == 3
    assert store.revoke_user("alice") == 0
    assert store.revoke_user("nobody") == 0
    assert all(store.touch(h, t0) is None for h in mine)
    assert store.touch(other, t0) is not None
    assert store.count_active(t0) == 1


def test_list_user_lists_valid_sessions_oldest_first(store: SessionStore) -> None:
    t0 = now_us()
    newest = _new(store, t0, user_id="alice", created_us=t0 - 1 * S)[1]
    oldest = _new(store, t0, user_id="alice", created_us=t0 - 3 * S)[1]
    middle = _new(store, t0, user_id="alice", created_us=t0 - 2 * S)[1]
    _new(store, t0, user_id="alice", created_us=t0 - 4 * S, idle=10 * S)  # idle-expired at t0 + 10 s
    revoked = _new(store, t0, user_id="alice", created_us=t0 - 5 * S)[0]
    store.revoke(revoked)
    _new(store, t0, user_id="bob")
    assert store.list_user("alice", t0 + 10 * S) == [oldest, middle, newest]
    assert len(store.list_user("alice", t0)) == 4
    assert store.list_user("nobody", t0) == []


def test_set_data(store: SessionStore) -> None:
    t0 = now_us()
    token_hash, record = _new(store, t0)
    data = {"cart": ["a", "b"], "nested": {"ok": True, "n": 1.5}, "text": "中文 \"quoted\""}
    changed = store.set_data(token_hash, data, t0 + S)
    assert changed is not None and changed.data == data
    assert changed.session_id == record.session_id and changed.last_seen_us == t0 + S
    assert changed.idle_expires_us == t0 + S + IDLE  # a write slides too
    assert store.touch(token_hash, t0 + 2 * S) == changed
    emptied = store.set_data(token_hash, {}, t0 + 2 * S)
    assert emptied == msgspec.structs.replace(changed, data={}, last_seen_us=t0 + 2 * S,
                                              idle_expires_us=t0 + 2 * S + IDLE)
    assert store.touch(token_hash, t0 + 3 * S) == emptied
    assert store.set_data(_hash(), data, t0) is None
    store.revoke(token_hash)
    assert store.set_data(token_hash, data, t0 + 3 * S) is None


def test_a_revoke_racing_touches_is_never_undone(store: SessionStore) -> None:
    """Threads touch with ever later times (so that most touches write a slide)
    while another revokes: no touch that starts after the revoke finds the session."""
    t0 = now_us()
    idle = 100 * S  # granularity 1 s: each step below writes
    token_hash, record = _new(store, t0, ttl=24 * HOUR, idle=idle)
    steps = itertools.count(1)
    lock = threading.Lock()
    revoked = threading.Event()
    stop = threading.Event()
    found_after: list[SessionRecord] = []
    errors: list[BaseException] = []
    writes = [0]

    def hammer() -> None:
        try:
            while not stop.is_set():
                with lock:
                    at = t0 + next(steps) * S
                after = revoked.is_set()
                answer = store.touch(token_hash, at)
                if answer is not None and answer.last_seen_us == at:
                    with lock:
                        writes[0] += 1
                if after and answer is not None:
                    found_after.append(answer)
        except Exception as exc:  # any failure fails the test, reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    assert store.revoke(token_hash) is True
    revoked.set()
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert writes[0] > 10  # the race was real: slides were being written when the revoke ran
    assert found_after == []
    assert store.touch(token_hash, t0 + next(steps) * S) is None
    assert store.list_user(record.user_id, t0) == []
    assert store.count_active(t0) == 0
    if store.scheme == "redis":
        client = _raw_redis()
        assert client.keys("ps:us:*") == []
        client.close()


def test_count_active(store: SessionStore) -> None:
    t0 = now_us()
    assert store.count_active(t0) == 0
    hashes = [_new(store, t0, user_id=f"u{n}")[0] for n in range(3)]
    _new(store, t0, idle=20 * S)
    _new(store, t0, ttl=30 * S, idle=30 * S)
    assert store.count_active(t0) == 5
    assert store.count_active(t0 + 20 * S) == 4
    assert store.count_active(t0 + 30 * S) == 3
    store.revoke(hashes[0])
    assert store.count_active(t0) == 4
    slid = store.touch(hashes[1], t0 + 100 * S)  # a slide moves the session's expiry in the count too
    assert slid is not None
    assert store.count_active(t0 + IDLE + 50 * S) == 1


def test_sweep_removes_expired_sessions(store: SessionStore) -> None:
    t0 = now_us()
    kept, _ = _new(store, t0, user_id="alice")
    idle_gone, _ = _new(store, t0, user_id="alice", idle=20 * S)
    absolute_gone, _ = _new(store, t0, user_id="bob", ttl=30 * S, idle=30 * S)
    assert store.sweep(t0) == 0
    assert store.sweep(t0 + 20 * S) == 1
    assert store.sweep(t0 + 20 * S) == 0
    assert store.sweep(t0 + 30 * S) == 1
    assert store.touch(kept, t0 + 30 * S) is not None
    assert store.touch(idle_gone, t0) is None  # removed, not merely expired at the sweep's time
    assert store.touch(absolute_gone, t0) is None
    assert store.count_active(t0) == 1
    assert [r.user_id for r in store.list_user("alice", t0)] == ["alice"]
    if store.scheme == "redis":  # the indexes shrank with them
        client = _raw_redis()
        assert client.zcard("ps:us:z") == 1
        assert client.smembers("ps:us:u:alice") == {kept.encode()}
        assert not client.exists("ps:us:u:bob")
        client.close()


def test_redis_sweep_prunes_entries_of_sessions_redis_expired() -> None:
    """Keys Redis expired itself leave ZSET and user-set members that the sweep drops."""
    client = _raw_redis()
    client.flushdb()
    store = open_session_store(SHARED_REDIS, 2.0)
    try:
        t0 = now_us()
        short, _ = _new(store, t0, user_id="alice", ttl=200_000, idle=200_000)  # 0.2 s of real time
        kept, _ = _new(store, t0, user_id="alice")
        time.sleep(0.4)
        assert not client.exists(f"ps:us:t:{short}")
        assert client.zcard("ps:us:z") == 2
        assert store.sweep(now_us()) == 1
        assert client.zrange("ps:us:z", 0, -1) == [kept.encode()]
        assert client.smembers("ps:us:u:alice") == {kept.encode()}
    finally:
        store.close()
        client.flushdb()
        client.close()


def test_failure_windows(store: SessionStore) -> None:
    t0 = now_us()
    assert store.failures("login:alice", t0) == Failures(0, 0.0)
    for expected in (1, 2, 3):
        noted = store.note_failure("login:alice", 60.0, t0)
        assert noted.count == expected and 59.0 < noted.retry_after_s <= 60.0
    window = store.failures("login:alice", t0)
    assert window.count == 3 and 59.0 < window.retry_after_s <= 60.0
    assert store.failures("login:bob", t0).count == 0
    store.clear_failures("login:alice")
    assert store.failures("login:alice", t0) == Failures(0, 0.0)
    store.clear_failures("login:never")
    assert store.note_failure("login:alice", 60.0, t0).count == 1  # starts over


def test_a_failure_window_ends(store: SessionStore) -> None:
    """Redis ends windows by real-time TTLs, so this one waits them out."""
    t0 = now_us()
    store.note_failure("login:carol", 0.3, t0)
    assert store.note_failure("login:carol", 0.3, t0).count == 2
    time.sleep(0.4)
    t1 = now_us()
    assert store.failures("login:carol", t1).count == 0
    assert store.note_failure("login:carol", 60.0, t1).count == 1  # a new window, with its own length
    assert store.failures("login:carol", t1).retry_after_s > 59.0
    store.note_failure("login:dave", 0.3, t0)
    time.sleep(0.4)
    store.sweep(now_us())  # ended windows are dropped (SQLite; Redis expired them already)
    assert store.failures("login:dave", now_us()).count == 0
    if store.scheme == "sqlite":
        assert store.failures("login:carol", now_us()).count == 1


def test_check_answers(store: SessionStore) -> None:
    store.check()


def test_check_fails_when_the_store_is_unreachable(tmp_path: Path) -> None:
    port = _closed_port()
    stores: list[SessionStore] = [open_session_store(f"redis://:s3cret-pw@127.0.0.1:{port}/0", 0.5),
                                  open_session_store(f"rediss://:s3cret-pw@127.0.0.1:{port}/0", 0.5)]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    stores.append(open_session_store(f"sqlite:///{blocker / 'sub' / 'sessions.db'}"))
    token_hash = _hash()
    for store in stores:
        try:
            with pytest.raises(SessionStoreError) as failure:
                store.check()
            assert "s3cret-pw" not in str(failure.value)
            with pytest.raises(SessionStoreError) as failure:
                store.touch(token_hash, now_us())
            assert "s3cret-pw" not in str(failure.value) and token_hash not in str(failure.value)
            with pytest.raises(SessionStoreError):
                store.create(token_hash, _record(now_us()))
            with pytest.raises(SessionStoreError):
                store.note_failure("login:x", 60.0, now_us())
        finally:
            store.close()


def _closed_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_redis_client_settings_are_pinned() -> None:
    store = RedisSessionStore.connect("redis://:pw@127.0.0.1:6379/9", 5.0)
    try:
        pool = store._client.connection_pool
        assert isinstance(pool, redis.BlockingConnectionPool)
        assert pool.max_connections == 32 and pool.timeout == 5.0
        kwargs = pool.connection_kwargs
        assert kwargs["socket_connect_timeout"] == 1.0 and kwargs["socket_timeout"] == 2.0
        assert kwargs["health_check_interval"] == 10 and kwargs["password"] == "pw" and kwargs["db"] == 9
        assert kwargs["retry"].get_retries() == 3
    finally:
        store.close()


def test_redis_recovers_by_itself_after_a_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    store = open_session_store(server.url, 2.0)
    token_hash = _hash()
    stop = threading.Event()
    successes: list[float] = []
    store_errors: list[float] = []
    other_errors: list[BaseException] = []

    def traffic() -> None:
        while not stop.is_set():
            try:
                t = now_us()
                if store.touch(token_hash, t) is None:
                    store.create(token_hash, _record(t))  # --save "": the restart lost it
                successes.append(time.monotonic())
            except SessionStoreError:
                store_errors.append(time.monotonic())
            except Exception as exc:  # anything else is the failure this test looks for
                other_errors.append(exc)
            time.sleep(0.01)

    thread = threading.Thread(target=traffic)
    try:
        thread.start()
        time.sleep(1.5)
        down_at = time.monotonic()
        server.restart(down_s=1.0)
        up_at = time.monotonic()
        time.sleep(3.5)
    finally:
        stop.set()
        thread.join()
        store.close()
        server.kill()
    assert other_errors == []
    assert any(t < down_at for t in successes)
    assert store_errors, "the outage was not seen: the test did not test anything"
    assert all(down_at <= t <= up_at + 3 for t in store_errors)
    first_back = min(t for t in successes if t > up_at)
    assert first_back - up_at < 3.0
    assert sum(1 for t in successes if t > up_at + 1) > 50  # and it stays healthy
