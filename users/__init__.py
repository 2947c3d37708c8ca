"""Users and their login sessions (Phase 3): routes, service, cache."""
