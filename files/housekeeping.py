"""The query process's background work for files: check the blob store for
/health every few seconds, and sweep (expired uploads, unreferenced content,
leftovers of writers that died) at start and every files.gc_interval. Every
query worker runs it; the catalog's locks make concurrent sweeps harmless."""

from __future__ import annotations

import asyncio
import logging
import random
import time

from core.health import publish_store_health
from files.service import FileService
from plugins.blobs import BlobStoreError
from plugins.file_catalog import CatalogError

logger = logging.getLogger(__name__)
CHECK_INTERVAL_S = 5.0


async def housekeeping(files: FileService, spool_path: str) -> None:
    next_sweep = time.monotonic()  # at start: a kill -9 mid-upload leaves nothing once the service is back
    while True:
        await _check(files, spool_path)
        if time.monotonic() >= next_sweep:
            await _sweep(files)
            # Jittered, so that the workers of one machine do not sweep in step; 0: only at start.
            interval = files.settings.gc_interval or float("inf")
            next_sweep = time.monotonic() + interval * random.uniform(0.8, 1.2)
        await asyncio.sleep(CHECK_INTERVAL_S)


async def _check(files: FileService, spool_path: str) -> None:
    error = None
    try:
        await files.threads.run(files.store.check)
    except BlobStoreError as exc:
        error = str(exc)
    try:
        publish_store_health(spool_path, "blob_store", files.store.scheme, error)
    except OSError as exc:
        logger.warning("cannot record the blob store's health beside the spool: %s", exc)


async def _sweep(files: FileService) -> None:
    try:
        removed = await files.threads.run(files.sweep)
    except (BlobStoreError, CatalogError) as exc:
        logger.warning("file sweep failed, retried at the next interval: %s", exc)
        return
    if any(removed.values()):
        logger.info("file sweep removed %s", removed)
