"""Backups (issue 16): consistent snapshots of the sink and the spool in the
blob store (backup/service.py), their restore (backup/restore.py), the
commands (backup/cli.py), the API routes (backup/routes.py) and the
schedule with its gauges (backup/housekeeping.py)."""
