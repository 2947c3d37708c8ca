"""The wire types of API.md as msgspec Structs, shared by the service (which
validates and answers with them) and persistence_client (which sends and
decodes with them). Depends on msgspec alone.

translation: sessions, tasks and their answers (Phase 1); files (Phase 2);
users: users and user sessions (Phase 3); audit: the audit log (Phase 4).
"""
