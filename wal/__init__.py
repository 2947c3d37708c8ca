"""The spool: a SQLite WAL file that holds every accepted request until the
flusher has committed it to the sink. See FORMAT.md."""

from wal.spool import Spool
from wal.types import SpoolBusy, SpoolCorrupt, SpoolError, SpoolFull

__all__ = ["Spool", "SpoolBusy", "SpoolCorrupt", "SpoolError", "SpoolFull"]
