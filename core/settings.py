"""The one place that reads config.toml and the environment.

`load_settings()` decodes the file into frozen Structs, applies
`PS_<SECTION>_<KEY>` overrides, resolves relative paths against the file's
folder and validates ranges. Components receive only their own section.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import SplitResult, urlsplit

import msgspec
from msgspec import Meta, Struct

CONFIG_ENV = "PS_CONFIG"
ENV_PREFIX = "PS_"

Seconds = Annotated[float, Meta(gt=0)]
Port = Annotated[int, Meta(ge=1, le=65535)]


class ServiceSettings(Struct, frozen=True, forbid_unknown_fields=True):
    shutdown_grace: Annotated[float, Meta(ge=0)] = 30.0
    health_check_interval: Seconds = 1.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = False
    metrics_dir: str = "data/metrics"


class IngestSettings(Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Port = 8001
    workers: Annotated[int, Meta(ge=0, le=256)] = 0
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 8 * 1024 * 1024
    body_timeout: Seconds = 30.0
    flush_timeout: Seconds = 10.0

    @property
    def worker_count(self) -> int:
        return self.workers or (os.cpu_count() or 1)


class QuerySettings(Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Port = 8002
    workers: Annotated[int, Meta(ge=0, le=256)] = 0
    stats_cache: Annotated[float, Meta(ge=0)] = 5.0

    @property
    def worker_count(self) -> int:
        return self.workers or (os.cpu_count() or 1)


class SpoolSettings(Struct, frozen=True, forbid_unknown_fields=True):
    path: str = "data/spool.db"
    sync: Literal["full", "normal"] = "full"
    max_bytes: Annotated[int, Meta(ge=1024 * 1024)] = 1024 * 1024 * 1024
    busy_timeout: Seconds = 10.0
    group_commit_max_entries: Annotated[int, Meta(ge=1, le=10_000)] = 256
    max_lag: Annotated[float, Meta(ge=0)] = 30.0


class FlushSettings(Struct, frozen=True, forbid_unknown_fields=True):
    batch_rows: Annotated[int, Meta(ge=1, le=100_000)] = 1000
    # Sink connections writing each cycle at once, each a hash range of keys (flusher/writers.py); a cycle reads
    # up to batch_rows per writer. A sink that takes one writer at a time (SQLite) uses one.
    writers: Annotated[int, Meta(ge=1, le=16)] = 2
    max_delay: Annotated[float, Meta(ge=0)] = 1.0
    orphan_grace: Annotated[float, Meta(ge=0)] = 600.0
    retry_initial: Seconds = 0.2
    retry_max: Seconds = 5.0
    stall_after: Seconds = 30.0
    # Added to the flusher's nice value at start (all its threads): its work can wait, an acknowledgement cannot,
    # so ingest gets the CPU first when both want it (docs/BENCHMARKS.md, "The flusher's priority").
    nice: Annotated[int, Meta(ge=0, le=19)] = 10


class SinkSettings(Struct, frozen=True, forbid_unknown_fields=True):
    url: str = "sqlite:///data/store.db"
    connect_timeout: Seconds = 5.0
    # This node's id among the nodes that share the sink (each its own): of two writes of a key with the same
    # updated_at through two nodes, the higher id's wins (plugins/tables.py VERSION_NODE).
    node_id: Annotated[int, Meta(ge=0, le=65535)] = 0


class RetentionSettings(Struct, frozen=True, forbid_unknown_fields=True):
    interval: Annotated[float, Meta(ge=0)] = 3600.0
    completed_days: Annotated[float, Meta(ge=0)] = 90.0
    failed_days: Annotated[float, Meta(ge=0)] = 30.0


class FilesSettings(Struct, frozen=True, forbid_unknown_fields=True):
    url: str = "file:///data/files"
    max_bytes: Annotated[int, Meta(ge=1)] = 5 * 1024**3
    # S3: credentials (else the AWS_* environment), signing region, part size of multipart uploads.
    access_key: str = ""
    secret_key: str = ""
    region: str = "us-east-1"
    part_bytes: Annotated[int, Meta(ge=5 * 1024**2, le=5 * 1024**3)] = 8 * 1024**2
    # HMAC key of the local store's presigned URLs; "" = a random key kept in the store's folder.
    signing_secret: str = ""
    # The base URL clients reach the service at, for the local store's presigned URLs; "" = the request's host.
    public_url: str = ""
    upload_expiry: Annotated[float, Meta(ge=1, le=604800)] = 3600.0
    gc_interval: Annotated[float, Meta(ge=0)] = 300.0
    body_timeout: Seconds = 60.0


class UsersSettings(Struct, frozen=True, forbid_unknown_fields=True):
    max_failures: Annotated[int, Meta(ge=1, le=1000)] = 5
    failure_window: Seconds = 900.0
    # Argon2id: iterations, memory per hash (KiB) and lanes; a stored hash with other values is
    # rehashed at its next successful login.
    hash_time_cost: Annotated[int, Meta(ge=1, le=20)] = 2
    hash_memory_kib: Annotated[int, Meta(ge=8 * 1024, le=1024 * 1024)] = 19_456
    hash_parallelism: Annotated[int, Meta(ge=1, le=16)] = 1
    hash_threads: Annotated[int, Meta(ge=1, le=64)] = 2


class UserSessionsSettings(Struct, frozen=True, forbid_unknown_fields=True):
    url: str = "sqlite:///data/sessions.db"
    sweep_interval: Annotated[float, Meta(ge=0)] = 60.0


class CacheSettings(Struct, frozen=True, forbid_unknown_fields=True):
    url: str = "memory"
    ttl: Seconds = 60.0


Scope = Literal["write", "read", "admin"]


class ApiKey(Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    sha256: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]  # the key itself is never stored
    scopes: list[Scope]
    rate_per_s: Annotated[float, Meta(ge=0)] = 0.0  # requests/s per ingest or query process; 0 = unlimited


class AuthSettings(Struct, frozen=True, forbid_unknown_fields=True):
    keys: list[ApiKey] = []

    @property
    def is_enabled(self) -> bool:
        return bool(self.keys)


class AuditSettings(Struct, frozen=True, forbid_unknown_fields=True):
    # Events that occurred longer ago are deleted, oldest stored first, every retention.interval; 0 = keep all.
    retention_days: Annotated[float, Meta(ge=0)] = 365.0
    # The service's own events (management writes, users, logins, files, refused API keys).
    record_service_events: bool = True
    # Refused requests (a missing or wrong API key) recorded per second and process, at most: an
    # unauthenticated client must not be able to fill the spool. Those over the limit are counted
    # (persistence_audit_events_dropped_total), not recorded.
    refusals_per_s: Annotated[float, Meta(ge=0)] = 50.0


class BackupSettings(Struct, frozen=True, forbid_unknown_fields=True):
    # Where backups are kept: "" = the files store (files.url) under backups/, else a file:/// or s3:// URL.
    url: str = ""
    # A backup is made when the newest completed one is this old (seconds; 0 = only on request).
    interval: Annotated[float, Meta(ge=0)] = 86400.0
    keep: Annotated[int, Meta(ge=1, le=10_000)] = 7  # completed backups kept; older ones are deleted
    compression_level: Annotated[int, Meta(ge=1, le=19)] = 3  # zstd


class ArchiveSettings(Struct, frozen=True, forbid_unknown_fields=True):
    # Sessions completed or failed (not updated) this long ago move, with their tasks, to archive objects
    # in the blob store, every retention.interval; 0 = off (retention's cleanup deletes them instead).
    # On, it also archives audit events before audit.retention_days deletes them.
    after_days: Annotated[float, Meta(ge=0, le=3_650_000)] = 0.0
    # Where archive objects are kept: "" = the files store (files.url) under archive/, else a file:/// or s3:// URL.
    url: str = ""
    tasks_per_run: Annotated[int, Meta(ge=1)] = 50_000  # one archive command's work, so the flusher moves on
    compression_level: Annotated[int, Meta(ge=1, le=19)] = 3  # zstd


class Settings(Struct, frozen=True, forbid_unknown_fields=True):
    service: ServiceSettings = ServiceSettings()
    ingest: IngestSettings = IngestSettings()
    query: QuerySettings = QuerySettings()
    spool: SpoolSettings = SpoolSettings()
    flush: FlushSettings = FlushSettings()
    sink: SinkSettings = SinkSettings()
    retention: RetentionSettings = RetentionSettings()
    files: FilesSettings = FilesSettings()
    users: UsersSettings = UsersSettings()
    user_sessions: UserSessionsSettings = UserSessionsSettings()
    cache: CacheSettings = CacheSettings()
    audit: AuditSettings = AuditSettings()
    backup: BackupSettings = BackupSettings()
    archive: ArchiveSettings = ArchiveSettings()
    auth: AuthSettings = AuthSettings()
    # The file these settings came from ("" when none); children re-load it.
    source: str = ""


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


def load_settings(path: str | os.PathLike[str] | None = None,
                  environ: dict[str, str] | None = None) -> Settings:
    """Read the config file (argument, else $PS_CONFIG, else ./config.toml
    when present), apply PS_<SECTION>_<KEY> overrides, validate."""
    env = os.environ if environ is None else environ
    file = _find_file(path, env)
    raw = _read_toml(file) if file else {}
    _apply_env(raw, env)
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration{f' in {file}' if file else ''}: {exc}") from exc
    base = file.parent if file else Path.cwd()
    return _resolve_paths(settings, base, str(file or ""))


def _find_file(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    chosen = path or env.get(CONFIG_ENV)
    if chosen:
        file = Path(chosen).resolve()
        if not file.is_file():
            raise ConfigError(f"configuration file not found: {file}")
        return file
    default = Path.cwd() / "config.toml"
    return default.resolve() if default.is_file() else None


def _read_toml(file: Path) -> dict:
    try:
        return msgspec.toml.decode(file.read_bytes())
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{file} is not valid TOML: {exc}") from exc


def _apply_env(raw: dict, env: Mapping[str, str]) -> None:
    """PS_FLUSH_BATCH_ROWS=500 sets raw['flush']['batch_rows'] = '500'
    (converted to the key's type by msgspec's lax mode)."""
    for section in Settings.__struct_fields__:
        if section == "source":
            continue
        for key in type(getattr(Settings(), section)).__struct_fields__:
            name = f"{ENV_PREFIX}{section}_{key}".upper()
            if name in env:
                raw.setdefault(section, {})[key] = env[name]


def _resolve_paths(settings: Settings, base: Path, source: str) -> Settings:
    spool = msgspec.structs.replace(settings.spool, path=str((base / settings.spool.path).resolve()))
    service = msgspec.structs.replace(settings.service,
                                      metrics_dir=str((base / settings.service.metrics_dir).resolve()))
    sink = msgspec.structs.replace(settings.sink, url=_resolve_sqlite_url(settings.sink.url, base))
    _check_url(sink.url)
    files = msgspec.structs.replace(settings.files, url=_resolve_files_url(settings.files.url, base))
    user_sessions = msgspec.structs.replace(settings.user_sessions,
                                            url=_resolve_store_url(settings.user_sessions.url, base))
    _check_cache_url(settings.cache.url)
    backup = settings.backup
    if backup.url:
        backup = msgspec.structs.replace(backup, url=_resolve_files_url(backup.url, base, "backup.url"))
    archive = settings.archive
    if archive.url:
        archive = msgspec.structs.replace(archive, url=_resolve_files_url(archive.url, base, "archive.url"))
    return msgspec.structs.replace(settings, service=service, spool=spool, sink=sink, files=files,
                                   user_sessions=user_sessions, backup=backup, archive=archive, source=source)


def _resolve_store_url(url: str, base: Path) -> str:
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        return _resolve_sqlite_url(url, base)
    if scheme in ("redis", "rediss"):
        return url
    raise ConfigError(f"user_sessions.url: unknown scheme {scheme!r} (use sqlite:///path or redis://host:6379/0)")


def _check_cache_url(url: str) -> None:
    if url != "memory" and urlsplit(url).scheme not in ("redis", "rediss"):
        raise ConfigError("cache.url: use memory or redis://host:6379/0")


def _resolve_sqlite_url(url: str, base: Path) -> str:
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.startswith(prefix + "/"):
        return url
    return prefix + str((base / url[len(prefix):]).resolve())


def _resolve_files_url(url: str, base: Path, name: str = "files.url") -> str:
    """As with sqlite:///: file:///data/files is relative to the config file's
    folder, file:////srv/files absolute. s3:// URLs are checked, not changed."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = url[len("file:///"):] if url.startswith("file:///") else ""
        if not path:
            raise ConfigError(f"{name}: a file URL names a folder (file:///data/files, file:////srv/files)")
        return "file:///" + str((base / path).resolve()).lstrip("/") if not path.startswith("/") \
            else "file:///" + path.lstrip("/")
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError(f"{name}: an s3 URL names a bucket (s3://bucket/prefix?endpoint=http://host:port)")
        return url
    raise ConfigError(f"{name}: unknown scheme {parts.scheme!r} (use file:///path or s3://bucket/prefix)")


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("sqlite", "mysql"):
        raise ConfigError(f"sink.url: unknown scheme {parts.scheme!r} (use sqlite:///path or mysql://user:pass@host:port/db)")
    if parts.scheme == "mysql" and not _is_readable(parts):
        # Never echo the URL or urllib's error: both would show the password.
        raise ConfigError("sink.url: the mysql URL cannot be read; percent-encode '/', '#', '?' and '@' in the"
                          " user name and password (%2F, %23, %3F, %40)")
    if parts.scheme == "mysql" and not parts.path.strip("/"):
        raise ConfigError("sink.url: a mysql URL must name a database (mysql://user@host:3306/db)")


def _is_readable(parts: SplitResult) -> bool:
    # Several nodes (a Galera cluster) are host:port pairs separated by commas: each port must be a number;
    # one that is not means a '/' in the password cut the netloc short.
    hosts = parts.netloc.rpartition("@")[2]
    for host in hosts.split(","):
        port = host.rpartition("]")[2].partition(":")[2] if host.startswith("[") else host.partition(":")[2]
        if port and not port.isdigit():
            return False
    return not (parts.query or parts.fragment)  # what follows '?' or '#' would be lost
