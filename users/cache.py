"""The user cache: cache-aside with a TTL, single-flight on a miss, and
never stale after a write has answered.

TTL alone is not enough: several query workers (and nodes) each keep
entries, and a write answered by one must not leave another serving the
old user. So every user has an epoch, a counter that a write bumps after its
commit and before it answers, in a place every reader sees. An entry
remembers the epoch it was read under (taken before the database read) and
is used only while the epoch is unchanged:

- a reader that starts after a write answered sees the bumped epoch; an
  entry with that epoch was read after the bump, hence after the commit;
- a reader that raced the write stored the old epoch: its entry is dead.

Two places for epochs and entries (`cache.url`):
- `memory` (default): entries in the process, epochs in a small shared
  file beside the spool (mmap, 65,536 slots; a bump takes an flock), so
  every worker of the machine sees a bump at once;
- `redis://...`: entries and epochs in Redis (one MGET per read), shared by
  every node.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import hashlib
import logging
import mmap
import os
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import msgspec
import redis

from core import metrics
from plugins.sessions.redis import redis_client

logger = logging.getLogger(__name__)
T = TypeVar("T")
SLOTS = 65_536
_SLOT = struct.Struct("<Q")
MAX_MEMORY_ENTRIES = 100_000
EPOCH_FILE = "user-cache.epochs"
EPOCH_KEY_TTL_S = 86_400  # far longer than any entry lives


class CacheUnavailable(Exception):
    """The shared cache (Redis) failed; the read goes to the database instead."""


class _Backend(Protocol):
    def load(self, key: str) -> tuple[int, Any | None, bool]:
        """(current epoch, entry value, whether an entry with that epoch exists)."""

    def store(self, key: str, epoch: int, value: Any) -> None: ...

    def bump(self, key: str) -> None: ...

    def close(self) -> None: ...


def _slot(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "little") % SLOTS


class SharedEpochs:
    """Epoch counters in a file every process of the machine maps."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < SLOTS * _SLOT.size:
            os.ftruncate(self._fd, SLOTS * _SLOT.size)
        self._map = mmap.mmap(self._fd, SLOTS * _SLOT.size)

    def get(self, key: str) -> int:
        return int(_SLOT.unpack_from(self._map, _slot(key) * _SLOT.size)[0])

    def bump(self, key: str) -> None:
        offset = _slot(key) * _SLOT.size
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # increments of two processes must not merge into one
        try:
            _SLOT.pack_into(self._map, offset, _SLOT.unpack_from(self._map, offset)[0] + 1)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


class MemoryBackend:
    def __init__(self, epochs: SharedEpochs, ttl_s: float) -> None:
        self._epochs = epochs
        self._ttl_s = ttl_s
        self._entries: collections.OrderedDict[str, tuple[int, float, Any]] = collections.OrderedDict()

    def load(self, key: str) -> tuple[int, Any | None, bool]:
        epoch = self._epochs.get(key)
        entry = self._entries.get(key)
        if entry is None or entry[0] != epoch or entry[1] < time.monotonic():
            return epoch, None, False
        return epoch, entry[2], True

    def store(self, key: str, epoch: int, value: Any) -> None:
        self._entries[key] = (epoch, time.monotonic() + self._ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > MAX_MEMORY_ENTRIES:
            self._entries.popitem(last=False)

    def bump(self, key: str) -> None:
        self._epochs.bump(key)
        self._entries.pop(key, None)

    def close(self) -> None:
        self._epochs.close()


class RedisBackend:
    """Entries and epochs in Redis: `ps:uc:v:<key>` holds (epoch, value), `ps:uc:e:<key>` the epoch."""

    def __init__(self, client: redis.Redis, ttl_s: float, encode: Callable[[Any], Any],
                 decode: Callable[[Any], Any]) -> None:
        self._client = client
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._encode = encode
        self._decode = decode

    def load(self, key: str) -> tuple[int, Any | None, bool]:
        try:
            epoch_raw, entry_raw = self._client.mget(f"ps:uc:e:{key}", f"ps:uc:v:{key}")
        except (redis.RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from exc
        epoch = int(epoch_raw or 0)
        if entry_raw is None:
            return epoch, None, False
        stored_epoch, value = msgspec.msgpack.decode(entry_raw if isinstance(entry_raw, bytes) else entry_raw.encode())
        if stored_epoch != epoch:
            return epoch, None, False
        return epoch, self._decode(value), True

    def store(self, key: str, epoch: int, value: Any) -> None:
        try:
            self._client.set(f"ps:uc:v:{key}", msgspec.msgpack.encode((epoch, self._encode(value))), px=self._ttl_ms)
        except (redis.RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from exc

    def bump(self, key: str) -> None:
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.incr(f"ps:uc:e:{key}")
            pipe.expire(f"ps:uc:e:{key}", EPOCH_KEY_TTL_S)
            pipe.delete(f"ps:uc:v:{key}")
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from exc

    def close(self) -> None:
        self._client.close()


class ReadThrough(Generic[T]):
    """get(key, load): the cached value, or load(key)'s, read once per key
    at a time in this process however many ask (single flight)."""

    def __init__(self, backend: _Backend, run: Callable[..., Awaitable[Any]]) -> None:
        self._backend = backend
        self._run = run  # runs a blocking call in a thread (the Redis backend blocks)
        self._flights: dict[str, asyncio.Future[T | None]] = {}
        self._is_memory = isinstance(backend, MemoryBackend)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args) if self._is_memory else await self._run(fn, *args)

    async def get(self, key: str, load: Callable[[str], Awaitable[T | None]]) -> T | None:
        try:
            epoch, value, found = await self._call(self._backend.load, key)
        except CacheUnavailable as exc:
            metrics.REDIS_ERRORS.labels("cache").inc()
            logger.warning("user cache unavailable, reading the database: %s", exc)
            return await load(key)
        if found:
            metrics.USER_CACHE.labels("hit").inc()
            return value
        metrics.USER_CACHE.labels("miss").inc()
        flight = self._flights.get(key)
        if flight is not None:
            return await asyncio.shield(flight)
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            value = await load(key)
            flight.set_result(value)
        except BaseException as exc:
            flight.set_exception(exc)
            flight.exception()  # retrieved: waiters get it, an unwaited flight logs nothing
            raise
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]
        try:
            await self._call(self._backend.store, key, epoch, value)
        except CacheUnavailable as exc:
            metrics.REDIS_ERRORS.labels("cache").inc()
            logger.warning("user cache unavailable, entry not kept: %s", exc)
        return value

    async def invalidate(self, key: str) -> None:
        """After the write committed, before it answers. A Redis that fails
        here fails the write's answer (503): its commit stands, but no reader
        may trust the cache until the epoch moved, so the caller must know."""
        self._flights.pop(key, None)  # a flight started before the write must not feed later readers
        await self._call(self._backend.bump, key)

    def close(self) -> None:
        self._backend.close()


def open_backend(url: str, ttl_s: float, spool_path: str, encode: Callable[[Any], Any],
                 decode: Callable[[Any], Any], connect_timeout: float) -> _Backend:
    if url == "memory":
        return MemoryBackend(SharedEpochs(Path(spool_path).parent / EPOCH_FILE), ttl_s)
    return RedisBackend(redis_client(url, connect_timeout), ttl_s, encode, decode)
