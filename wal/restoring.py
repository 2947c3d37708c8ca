"""The marker `backup restore` leaves beside the spool while it swaps files
in (backup/restore.py): while it is there, the sink and the spool may be
from two different states, so no process may open the spool."""

from __future__ import annotations

from pathlib import Path


def marker_path(spool: Path) -> Path:
    return spool.with_name(spool.name + ".restoring")


def unfinished_restore(spool: Path) -> str | None:
    """A message for the operator when a restore was interrupted, else None."""
    marker = marker_path(spool)
    if not marker.exists():
        return None
    return (f"a restore was interrupted ({marker} is there): run `persistence-service backup restore <id>` "
            f"again with the backup id it names, which finishes it, before starting the service")
