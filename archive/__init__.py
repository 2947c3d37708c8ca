"""The archive: finished sessions (with their tasks) and expired audit events
moved out of the hot tables into zstd JSON-lines objects in the blob store,
readable and restorable one session at a time. See archive/FORMAT.md."""
