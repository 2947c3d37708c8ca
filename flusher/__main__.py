"""`python -m flusher`: the flusher process."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import threading

from archive.runner import Archiver
from core import metrics
from core.logging import setup_logging
from core.settings import load_settings
from flusher.loop import Flusher
from core.supervisor import EXIT_FATAL
from flusher.writers import Writers
from plugins import Sink, TransientSinkError, open_sink
from wal import Spool, SpoolCorrupt
from wal.salvage import check, damaged_message

logger = logging.getLogger("flusher")
LOCK_RETRY_S = 0.2


def main() -> None:
    settings = load_settings()
    setup_logging(settings.service.log_level)
    if settings.flush.nice:  # before any thread starts: on Linux each thread has its own nice value, inherited
        os.nice(settings.flush.nice)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    lock = _only_flusher(settings.spool.path, stop)
    if lock is None:
        return
    report = check(settings.spool.path)
    if not report.is_ok:
        logger.critical("%s", damaged_message(report))
        sys.exit(EXIT_FATAL)
    try:
        spool = Spool.open(settings.spool)
    except SpoolCorrupt as exc:
        logger.critical("%s", exc)
        sys.exit(EXIT_FATAL)
    sink = open_sink(settings.sink)
    count = settings.flush.writers if sink.parallel_writes else 1
    writers = Writers([sink, *(open_sink(settings.sink) for _ in range(count - 1))],  # they connect when first used
                      settings.flush.batch_rows)
    archiver = Archiver(settings)
    metrics.mark_up("flusher")
    try:
        _migrate_until_up(sink, spool, stop)
        Flusher(spool, sink, settings.flush, settings.retention, settings.audit.retention_days, archiver,
                settings.archive, writers).run(stop, settings.service.shutdown_grace)
    finally:
        archiver.close()
        writers.close()
        sink.close()
        spool.close()


def _only_flusher(spool_path: str, stop: threading.Event) -> int | None:
    """One flusher per spool, always: two would race a delete against a replay
    of older writes. A new flusher (say, after its supervisor was killed) waits
    here until the previous one has finished draining and exited. The kernel
    drops the lock when its holder dies, however it dies."""
    os.makedirs(os.path.dirname(spool_path) or ".", exist_ok=True)
    fd = os.open(spool_path + ".flusher.lock", os.O_RDWR | os.O_CREAT, 0o644)
    logged = False
    while not stop.is_set():
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if not logged:
                logger.warning("another flusher holds %s.flusher.lock; waiting for it to exit", spool_path)
                logged = True
            stop.wait(LOCK_RETRY_S)
    os.close(fd)
    return None


def _migrate_until_up(sink: Sink, spool: Spool, stop: threading.Event) -> None:
    # The database may be down at start: ingest keeps accepting into the spool.
    while not stop.is_set():
        try:
            sink.migrate()
            return
        except TransientSinkError as exc:
            logger.warning("cannot prepare the database yet, retrying: %s", exc)
            spool.beat(False, str(exc))
            stop.wait(1.0)


if __name__ == "__main__":
    main()
