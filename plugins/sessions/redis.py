"""The Redis session store, shared by every node: sessions expire by Redis
TTLs; the sweep only prunes the indexes Redis cannot expire itself.

Layout (prefix "ps:us:"):
  t:<token_hash>   the msgpack-encoded SessionRecord, PX = its expiry - now
  i:<session_id>   -> token_hash, for revoke_id (same TTL as the session)
  u:<user_id>      SET of token hashes, for revoke_user / list_user; stale
                   members are pruned when read and by sweep
  z                ZSET of token hashes scored by expiry (µs), for
                   count_active and sweep
  f:<login_key>    a failure count that expires with its window

Writes to an existing session (the slide of touch, set_data) are a
compare-and-set in a small Lua script: the record is replaced only while it
is still the one read. That keeps a concurrent revoke from being undone (no
write recreates a deleted key) and a touch from reverting a concurrent
set_data's data.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import msgspec
import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from core.times import now_us as _now_us
from plugins.sessions import Failures, SessionRecord, SessionStoreError, touch_granularity

PREFIX = "ps:us:"
ZSET = PREFIX + "z"
MAX_CONNECTIONS = 32
SWEEP_BATCH = 500

# KEYS: t, z, i   ARGV: the record as read, the new record, PX ms, new score, token_hash.
# 1 when written; 0 when the record changed or vanished since it was read.
_CAS = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], 'XX', ARGV[4], ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
"""

# KEYS: t, z, i, u   ARGV: the record as read, token_hash. Deletes a session only
# while it is still the (expired) record read, so a concurrent slide wins.
_DELETE_IF_SAME = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[4], ARGV[2])
return 1
"""

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SessionRecord)


def _t(token_hash: str) -> str:
    return f"{PREFIX}t:{token_hash}"


def _i(session_id: str) -> str:
    return f"{PREFIX}i:{session_id}"


def _u(user_id: str) -> str:
    return f"{PREFIX}u:{user_id}"


def _f(login_key: str) -> str:
    return f"{PREFIX}f:{login_key}"


def _expiry(record: SessionRecord) -> int:
    return min(record.expires_us, record.idle_expires_us)


def _ttl_ms(until_us: int, now_us: int) -> int:
    return math.ceil((until_us - now_us) / 1000)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _texts(values: Any) -> list[str]:
    """Members as str (the client answers bytes)."""
    return [_text(value) for value in values]


def _decode(raw: bytes | str) -> SessionRecord:
    return _decoder.decode(raw.encode() if isinstance(raw, str) else raw)


def redis_client(url: str, connect_timeout: float) -> redis.Redis:
    """A client whose pinned settings let it ride out a Redis restart by itself."""
    connect_s = min(max(connect_timeout, 0.1), 1.0)
    pool = redis.BlockingConnectionPool.from_url(
        url,
        # A dead or unreachable server fails a call in about a second instead of
        # hanging a worker thread for the OS's TCP timeouts.
        socket_connect_timeout=connect_s,
        # Every command here is small; 2 s without an answer means a stuck server.
        socket_timeout=min(max(connect_timeout, 1.0), 2.0),
        # A pooled connection broken by a restart fails once; the retry reconnects
        # (a few quick attempts, ~0.15 s in all, bridge a failover or restart).
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        # A connection idle for 10 s is PINGed before use, so one cut while idle
        # (restart, NAT or firewall timeout) is replaced before it fails a command.
        health_check_interval=10,
        socket_keepalive=True,  # dead peers are noticed even on idle connections
        # Bounded: a burst of threads cannot open thousands of connections; the
        # blocking pool makes them wait their turn (up to connect_timeout) rather
        # than fail at once.
        max_connections=MAX_CONNECTIONS,
        timeout=max(connect_timeout, 0.1),
    )
    return redis.Redis(connection_pool=pool)


def _where(url: str) -> str:
    """host:port/db of the URL, never its credentials."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path or '/0'}"


class RedisSessionStore:
    scheme = "redis"

    def __init__(self, client: redis.Redis, url: str) -> None:
        self._client = client
        self._where = _where(url)
        password = urlsplit(url).password
        self._secrets = [s for s in (password, unquote(password or "")) if s]
        self._cas = client.register_script(_CAS)
        self._delete_if_same = client.register_script(_DELETE_IF_SAME)

    @classmethod
    def connect(cls, url: str, connect_timeout: float = 5.0) -> RedisSessionStore:
        """Nothing is sent yet: a Redis that is down makes calls fail, not the start."""
        return cls(redis_client(url, connect_timeout), url)

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        try:
            yield
        except (RedisError, OSError, msgspec.DecodeError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            for secret in self._secrets:
                detail = detail.replace(secret, "***")
            raise SessionStoreError(f"redis session store {operation} at {self._where} failed: {detail}") from exc

    # -- sessions ---------------------------------------------------------

    def create(self, token_hash: str, record: SessionRecord) -> None:
        now = _now_us()
        expiry = _expiry(record)
        ttl = _ttl_ms(expiry, now)
        if ttl <= 0:
            return  # born expired: nothing to keep
        with self._errors("create"):
            pipe = self._client.pipeline(transaction=True)  # the session and its indexes appear together
            pipe.set(_t(token_hash), _encoder.encode(record), px=ttl)
            pipe.set(_i(record.session_id), token_hash, px=ttl)
            pipe.zadd(ZSET, {token_hash: expiry})
            user = _u(record.user_id)
            pipe.sadd(user, token_hash)
            # The set lives as long as the user's longest session could, so it cannot leak.
            user_ttl = max(_ttl_ms(record.expires_us, now), ttl)
            pipe.pexpire(user, user_ttl, nx=True)
            pipe.pexpire(user, user_ttl, gt=True)
            pipe.execute()

    def _read(self, token_hash: str) -> tuple[bytes, SessionRecord] | None:
        raw = self._client.get(_t(token_hash))
        if raw is None:
            return None
        raw = raw.encode() if isinstance(raw, str) else raw
        return raw, _decoder.decode(raw)

    def _write_over(self, token_hash: str, raw: bytes, record: SessionRecord, now_us: int) -> bool:
        """Replace raw by record, only while raw is what is stored."""
        expiry = _expiry(record)
        keys = [_t(token_hash), ZSET, _i(record.session_id)]
        args: list[bytes | str | int] = [raw, _encoder.encode(record), max(_ttl_ms(expiry, now_us), 1), expiry,
                                         token_hash]
        return bool(self._cas(keys=keys, args=args))

    def touch(self, token_hash: str, now_us: int) -> SessionRecord | None:
        with self._errors("touch"):
            for _ in range(5):  # a lost compare-and-set means another writer moved it: read again
                found = self._read(token_hash)
                if found is None:
                    return None
                raw, record = found
                if not record.is_valid(now_us):
                    return None
                slid = min(now_us + record.idle_us, record.expires_us)
                if slid - record.idle_expires_us < touch_granularity(record.idle_us):
                    return record  # most validations: a read only
                new = msgspec.structs.replace(record, idle_expires_us=slid, last_seen_us=now_us)
                if self._write_over(token_hash, raw, new, now_us):
                    return new
            return record  # still valid as last read; the slide is left to the next touch

    def set_data(self, token_hash: str, data: dict[str, Any], now_us: int) -> SessionRecord | None:
        with self._errors("set_data"):
            for _ in range(20):  # only a storm of writes to the one session loses this often
                found = self._read(token_hash)
                if found is None:
                    return None
                raw, record = found
                if not record.is_valid(now_us):
                    return None
                # A write anyway: it also slides the idle expiry (the token was just used).
                slid = max(record.idle_expires_us, min(now_us + record.idle_us, record.expires_us))
                new = msgspec.structs.replace(record, data=data, idle_expires_us=slid, last_seen_us=now_us)
                if self._write_over(token_hash, raw, new, now_us):
                    return new
        raise SessionStoreError("redis session store set_data: the session kept changing; not written")

    def _remove(self, hashes: list[str]) -> int:
        """Delete sessions and their index entries; how many sessions existed."""
        if not hashes:
            return 0
        raws = self._client.mget([_t(h) for h in hashes])
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(*[_t(h) for h in hashes])
        pipe.zrem(ZSET, *hashes)
        for raw, token_hash in zip(raws, hashes):
            if raw is not None:
                record = _decode(raw)
                pipe.delete(_i(record.session_id))
                pipe.srem(_u(record.user_id), token_hash)
        return int(pipe.execute()[0])

    def revoke(self, token_hash: str) -> bool:
        with self._errors("revoke"):
            return self._remove([token_hash]) > 0

    def revoke_id(self, session_id: str) -> bool:
        with self._errors("revoke_id"):
            token_hash = self._client.get(_i(session_id))
            if token_hash is None:
                return False
            removed = self._remove([_text(token_hash)])
            self._client.delete(_i(session_id))  # also when its session had already expired
            return removed > 0

    def revoke_user(self, user_id: str) -> int:
        with self._errors("revoke_user"):
            hashes = sorted(_texts(self._client.smembers(_u(user_id))))
            removed = 0
            for at in range(0, len(hashes), SWEEP_BATCH):
                part = hashes[at:at + SWEEP_BATCH]
                removed += self._remove(part)
                # SREM, not DEL: a session created meanwhile keeps its index entry.
                self._client.srem(_u(user_id), *part)
            return removed

    def list_user(self, user_id: str, now_us: int) -> list[SessionRecord]:
        with self._errors("list_user"):
            user = _u(user_id)
            hashes = _texts(self._client.smembers(user))
            if not hashes:
                return []
            raws = self._client.mget([_t(h) for h in hashes])
            stale = [h for h, raw in zip(hashes, raws) if raw is None]
            if stale:
                self._client.srem(user, *stale)
            records = [_decode(raw) for raw in raws if raw is not None]
        valid = [r for r in records if r.is_valid(now_us)]
        return sorted(valid, key=lambda r: (r.created_us, r.session_id))

    def count_active(self, now_us: int) -> int:
        with self._errors("count_active"):
            return int(self._client.zcount(ZSET, f"({now_us}", "+inf"))

    def sweep(self, now_us: int) -> int:
        """Remove the sessions expired at now_us (Redis has dropped most of them
        already), their ZSET entries, and user-set members whose session is
        gone; how many expired sessions were pruned."""
        with self._errors("sweep"):
            removed = 0
            while True:
                expired = _texts(self._client.zrangebyscore(ZSET, "-inf", now_us, start=0, num=SWEEP_BATCH))
                if not expired:
                    break
                before = removed
                raws = self._client.mget([_t(h) for h in expired])
                gone = [h for h, raw in zip(expired, raws) if raw is None]
                if gone:
                    self._client.zrem(ZSET, *gone)  # no write recreates a deleted key: safe without a check
                    removed += len(gone)
                for token_hash, raw in zip(expired, raws):
                    if raw is None:
                        continue
                    record = _decode(raw)
                    if record.is_valid(now_us):
                        continue  # slid since its score was read
                    keys = [_t(token_hash), ZSET, _i(record.session_id), _u(record.user_id)]
                    removed += int(self._delete_if_same(keys=keys, args=[raw, token_hash]))
                if removed == before:
                    break  # only sessions slid meanwhile are left: another pass would see them again
            self._prune_user_sets()
            return removed

    def _prune_user_sets(self) -> None:
        """User-set members whose session Redis has expired (their user is unknown
        once the record is gone, so every set is visited)."""
        for user in self._client.scan_iter(match=f"{PREFIX}u:*", count=SWEEP_BATCH, _type="set"):
            hashes = _texts(self._client.smembers(user))
            for at in range(0, len(hashes), SWEEP_BATCH):
                part = hashes[at:at + SWEEP_BATCH]
                pipe = self._client.pipeline(transaction=False)
                for token_hash in part:
                    pipe.exists(_t(token_hash))
                stale = [h for h, exists in zip(part, pipe.execute()) if not exists]
                if stale:
                    self._client.srem(user, *stale)

    # -- login failures ---------------------------------------------------

    def note_failure(self, login_key: str, window_s: float, now_us: int) -> Failures:
        key = _f(login_key)
        window_ms = max(math.ceil(window_s * 1000), 1)
        with self._errors("note_failure"):
            # MULTI: the window cannot end between SET NX and INCR (an INCR of a
            # fresh key would leave a count without expiry).
            pipe = self._client.pipeline(transaction=True)
            pipe.set(key, 0, nx=True, px=window_ms)
            pipe.incr(key)
            pipe.pttl(key)
            _, count, pttl = pipe.execute()
            if pttl < 0:  # a count left without expiry by some other writer: give it a window
                self._client.pexpire(key, window_ms)
                pttl = window_ms
        return Failures(int(count), pttl / 1000)

    def failures(self, login_key: str, now_us: int) -> Failures:
        key = _f(login_key)
        with self._errors("failures"):
            pipe = self._client.pipeline(transaction=True)
            pipe.get(key)
            pipe.pttl(key)
            count, pttl = pipe.execute()
        if count is None:
            return Failures(0, 0.0)
        return Failures(int(count), max(pttl, 0) / 1000)

    def clear_failures(self, login_key: str) -> None:
        with self._errors("clear_failures"):
            self._client.delete(_f(login_key))

    # -- upkeep -----------------------------------------------------------

    def check(self) -> None:
        with self._errors("check"):
            self._client.ping()

    def close(self) -> None:
        self._client.close()
        self._client.connection_pool.disconnect()
