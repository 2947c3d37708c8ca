"""The query process's background work for backups: publish the gauges
(last success, its size, how many are kept) and start a scheduled backup
when the newest completed one is older than backup.interval. Every query
worker runs it; the backup lock, and a second look at the list once it is
held, make sure only one of them starts it."""

from __future__ import annotations

import asyncio
import logging
import random

from backup.parts import Manifest
from backup.service import BackupRunning, Backups
from core import metrics
from core.times import now_us
from plugins import SinkError
from plugins.blobs import BlobStoreError

logger = logging.getLogger(__name__)
CHECK_EVERY_S = 30.0
FIRST_CHECK_S = 2.0  # after start: the first scheduled backup of a new install comes soon, not a day later


def is_due(manifests: list[Manifest], interval: float, at_us: int) -> bool:
    """No completed backup finished within the last `interval` seconds (and none is running)."""
    if any(m.status == "running" for m in manifests):
        return False
    finished = [m.finished_at_us or 0 for m in manifests if m.status == "completed"]
    return not finished or at_us - max(finished) >= interval * 1e6


def publish(manifests: list[Manifest], interval: float) -> None:
    completed = [m for m in manifests if m.status == "completed"]
    metrics.BACKUP_INTERVAL.set(interval)
    metrics.BACKUPS_KEPT.set(len(completed))
    # 0 until one completes: the alert on the last success's age then fires once a scheduled one is overdue.
    metrics.BACKUP_LAST_SUCCESS.set((completed[0].finished_at_us or 0) / 1e6 if completed else 0)
    metrics.BACKUP_LAST_SIZE.set(completed[0].size_bytes if completed else 0)


def _round(backups: Backups) -> None:
    interval = backups.settings.backup.interval
    manifests = backups.list_all()
    publish(manifests, interval)
    if interval and is_due(manifests, interval, now_us()):
        try:
            started = backups.start("schedule", only_if=lambda listed: is_due(listed, interval, now_us()))
        except BackupRunning:
            return  # another worker (or an operator) is making one
        if started is not None:
            logger.info("scheduled backup %s started (backup.interval %g s)", started.backup_id, interval)


async def housekeeping(backups: Backups) -> None:
    await asyncio.sleep(FIRST_CHECK_S * random.uniform(1.0, 2.0))
    while True:
        try:
            await asyncio.to_thread(_round, backups)
        except (BlobStoreError, SinkError, OSError) as exc:  # the store is away: the next round tries again
            logger.warning("backup housekeeping failed, retried in %.0f s: %s", CHECK_EVERY_S, exc)
        # A short interval (a test's, or a busy shop's) is checked often enough to be kept.
        every = min(CHECK_EVERY_S, max(1.0, backups.settings.backup.interval / 3)) if backups.settings.backup.interval \
            else CHECK_EVERY_S
        await asyncio.sleep(every * random.uniform(0.8, 1.2))
