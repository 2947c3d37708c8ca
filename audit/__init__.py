"""The audit log API of API.md (Phase 4), served by the query process:
search, one event, export, chain check. Events are written through ingest
(POST /api/v1/audit/events/batch, a record kind) and by the service itself
(wal/audit_trail.py)."""
