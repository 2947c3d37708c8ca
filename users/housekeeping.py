"""The query process's background work for login sessions: check the
session store for /health and count the valid sessions for the gauge every
few seconds, and sweep expired sessions and ended failure windows every
user_sessions.sweep_interval (Redis expires its keys itself; the sweep
prunes its indexes)."""

from __future__ import annotations

import asyncio
import logging
import random
import time

from core import metrics
from core.health import publish_store_health
from core.times import now_us
from plugins.sessions import SessionStoreError
from users.service import UserService

logger = logging.getLogger(__name__)
CHECK_INTERVAL_S = 5.0


async def housekeeping(users: UserService, spool_path: str, sweep_interval: float) -> None:
    next_sweep = time.monotonic() + sweep_interval * random.uniform(0.2, 1.0)
    while True:
        await _check(users, spool_path)
        if sweep_interval and time.monotonic() >= next_sweep:
            try:
                removed = await users.threads.run(users.sessions.sweep, now_us())
                if removed:
                    logger.info("session sweep removed %d expired sessions", removed)
            except SessionStoreError as exc:
                logger.warning("session sweep failed, retried at the next interval: %s", exc)
            # Jittered, so that the workers of one machine do not sweep in step.
            next_sweep = time.monotonic() + sweep_interval * random.uniform(0.8, 1.2)
        await asyncio.sleep(CHECK_INTERVAL_S)


async def _check(users: UserService, spool_path: str) -> None:
    error = None
    try:
        await users.threads.run(users.sessions.check)
        metrics.USER_SESSIONS_ACTIVE.set(await users.threads.run(users.sessions.count_active, now_us()))
    except SessionStoreError as exc:
        error = str(exc)
    try:
        publish_store_health(spool_path, "session_store", users.sessions.scheme, error)
    except OSError as exc:
        logger.warning("cannot record the session store's health beside the spool: %s", exc)
