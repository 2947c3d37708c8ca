"""A backup's objects in the store: its manifest, and its parts, each one
zstd stream whose SHA-256 (of the stored bytes) and sizes the manifest
records. Reading a part back checks all three, so a damaged or truncated
part is found by whoever reads it: verify, or a restore before it changes
anything.

    backups/<id>/manifest.json            status, records, parts (rewritten when it ends)
    backups/<id>/spool.sqlite.zst         the spool file (accepted, not yet written)
    backups/<id>/sink.sqlite.zst          SQLite sink: the database file
    backups/<id>/tables/<name>.zst        MySQL sink: one table's rows (backup/mysql_dump.py)
    backups/<id>/blobs.zst                (key, size) of every object of the files store
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator

import msgspec
import zstandard
from msgspec import Struct

from persistence_api.backups import BackupRecords, BackupStatus
from plugins.blobs import BlobMissing, BlobStore, BlobWriter

PREFIX = "backups/"
MANIFEST = "manifest.json"
FORMAT = 1
FRAME = struct.Struct(">I")  # a row chunk's length, before its msgpack bytes
# The tables whose rows are the records a backup counts (persistence_api.backups.BackupRecords), by field.
RECORD_TABLES = {"translation_sessions": "sessions", "translation_tasks": "tasks", "files": "files",
                 "users": "users", "audit_events": "audit_events"}
_DECODE_CHUNK = msgspec.msgpack.Decoder(list[list])


class BackupDamaged(Exception):
    """A part does not read back as written; the message names it and how."""


class Part(Struct):
    name: str  # "spool", "sink", "table:<name>", "blobs"
    key: str
    stored_bytes: int
    raw_bytes: int
    sha256: str  # of the stored (compressed) bytes
    rows: int = 0  # rows of a table part, objects of the blob listing


class TableDump(Struct):
    """A MySQL table: its DDL and columns as they were; its rows in `part`, or
    (`rebuilt`) made again on restore from another table (the Mroonga search index)."""
    name: str
    create: str
    columns: list[str]
    part: Part | None = None
    rebuilt: bool = False


class Manifest(Struct):
    backup_id: str
    status: BackupStatus
    started_at_us: int
    sink: str  # "sqlite" or "mysql"
    location: str
    trigger: str
    format: int = FORMAT
    finished_at_us: int | None = None
    records: BackupRecords = msgspec.field(default_factory=BackupRecords)
    parts: list[Part] = []
    tables: list[TableDump] = []  # MySQL only
    database_collation: str = ""  # MySQL only
    error: str | None = None

    @property
    def size_bytes(self) -> int:
        return sum(p.stored_bytes for p in self.parts)

    def part(self, name: str) -> Part | None:
        return next((p for p in self.parts if p.name == name), None)


def backup_prefix(backup_id: str) -> str:
    return f"{PREFIX}{backup_id}/"


def write_manifest(store: BlobStore, manifest: Manifest) -> None:
    """Replace the manifest (a rename on the local store, one PUT on S3: never half written)."""
    writer = store.writer(backup_prefix(manifest.backup_id) + MANIFEST)
    try:
        writer.write(msgspec.json.encode(manifest))
        writer.commit()
    except BaseException:
        writer.abort()
        raise


def read_manifest(store: BlobStore, key: str) -> Manifest:
    body = b"".join(store.read(key))
    return msgspec.json.decode(body, type=Manifest)


class PartWriter:
    """Compresses what is written into one object, hashing what is stored."""

    def __init__(self, store: BlobStore, backup_id: str, file_name: str, level: int) -> None:
        self.key = backup_prefix(backup_id) + file_name
        self._blob: BlobWriter = store.writer(self.key)
        self._zstd = zstandard.ZstdCompressor(level=level).compressobj()
        self._hash = hashlib.sha256()
        self._stored = 0
        self._raw = 0
        self.rows = 0

    def write(self, data: bytes) -> None:
        self._raw += len(data)
        self._emit(self._zstd.compress(data))

    def write_rows(self, rows: list[list]) -> None:
        """A chunk of rows: its msgpack length-prefixed (read back by read_rows)."""
        body = msgspec.msgpack.encode(rows)
        self.write(FRAME.pack(len(body)) + body)
        self.rows += len(rows)

    def _emit(self, data: bytes) -> None:
        if data:
            self._hash.update(data)
            self._stored += len(data)
            self._blob.write(data)

    def commit(self, name: str) -> Part:
        self._emit(self._zstd.flush())
        self._blob.commit()
        return Part(name, self.key, self._stored, self._raw, self._hash.hexdigest(), self.rows)

    def abort(self) -> None:
        self._blob.abort()


def read_part(store: BlobStore, part: Part) -> Iterator[bytes]:
    """The part's raw bytes, checked: BackupDamaged when the stored bytes or
    their decompression differ from the manifest (raised after the last chunk
    at the latest, so a consumer must not act on the data before the end)."""
    digest = hashlib.sha256()
    stored = raw = 0
    inflate = zstandard.ZstdDecompressor().decompressobj()
    try:
        chunks = store.read(part.key)
    except BlobMissing as exc:
        raise BackupDamaged(f"{part.name}: {part.key} is missing") from exc
    try:
        for chunk in chunks:
            digest.update(chunk)
            stored += len(chunk)
            try:
                out = inflate.decompress(chunk)
            except zstandard.ZstdError as exc:
                raise BackupDamaged(f"{part.name}: not a valid zstd stream ({exc})") from None
            raw += len(out)
            if out:
                yield out
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    if stored != part.stored_bytes or digest.hexdigest() != part.sha256:
        raise BackupDamaged(f"{part.name}: {stored} bytes with SHA-256 {digest.hexdigest()[:16]}..., "
                            f"the manifest says {part.stored_bytes} bytes with {part.sha256[:16]}...")
    if raw != part.raw_bytes:
        raise BackupDamaged(f"{part.name}: {raw} bytes after decompression, the manifest says {part.raw_bytes}")


def read_rows(store: BlobStore, part: Part) -> Iterator[list[list]]:
    """The row chunks of a table part, in the order written (checked as read_part)."""
    buffer = bytearray()
    for data in read_part(store, part):
        buffer += data
        start = 0
        while len(buffer) - start >= FRAME.size:
            (length,) = FRAME.unpack_from(buffer, start)
            if len(buffer) - start - FRAME.size < length:
                break
            body = bytes(buffer[start + FRAME.size:start + FRAME.size + length])
            start += FRAME.size + length
            try:
                yield _DECODE_CHUNK.decode(body)
            except msgspec.DecodeError as exc:
                raise BackupDamaged(f"{part.name}: a chunk of rows cannot be decoded ({exc})") from None
        del buffer[:start]
    if buffer:
        raise BackupDamaged(f"{part.name}: {len(buffer)} bytes after the last whole chunk of rows")
