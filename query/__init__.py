"""The read, recovery, management and system API (port 8002)."""
