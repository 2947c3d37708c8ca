"""`python -m flusher`: the flusher process."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from core import metrics
from core.logging import setup_logging
from core.settings import load_settings
from flusher.loop import Flusher
from plugins import Sink, TransientSinkError, open_sink
from core.supervisor import EXIT_FATAL
from wal import Spool, SpoolCorrupt
from wal.salvage import check, damaged_message

logger = logging.getLogger("flusher")


def main() -> None:
    settings = load_settings()
    setup_logging(settings.service.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
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
    metrics.mark_up("flusher")
    try:
        _migrate_until_up(sink, spool, stop)
        Flusher(spool, sink, settings.flush, settings.retention).run(stop, settings.service.shutdown_grace)
    finally:
        sink.close()
        spool.close()


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
