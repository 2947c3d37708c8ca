"""Archive objects: zstd frames of JSON lines.

An object holds the sessions of one archive run and one month, one zstd
frame per session: its first line the session's row, then one line per
task, each a JSON object of the table's columns exactly as stored (times as
UTC storage text, game_info/metadata as their stored JSON text). Frames are
independent, so one session is read with a ranged GET of its frame (the
index keeps offset and length); concatenated they are also one valid zstd
stream, so `zstd -dc object | head` shows the rows."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import zstandard

from plugins.tables import SESSION_TABLE, TASK_TABLE

_ENCODER = msgspec.json.Encoder()
_ROW = msgspec.json.Decoder(dict[str, str | int | float | None])


class ArchiveDamaged(Exception):
    """An archive frame that does not decode, or does not hold what the index says."""


def month_of(stored_time: str) -> str:
    """'2026-11' of a storage text time ('2026-11-30 23:59:59.000000')."""
    return stored_time[:7]


def encode_rows(columns: Sequence[str], rows: Sequence[tuple], compressor: zstandard.ZstdCompressor) -> bytes:
    """One frame: a JSON object per row, one per line."""
    lines = b"".join(_ENCODER.encode(dict(zip(columns, row))) + b"\n" for row in rows)
    return compressor.compress(lines)


def decode_lines(frame: bytes) -> list[dict]:
    try:
        text = zstandard.ZstdDecompressor().decompress(frame)
        return [_ROW.decode(line) for line in text.splitlines()]
    except (zstandard.ZstdError, msgspec.DecodeError) as exc:
        raise ArchiveDamaged(f"archive frame does not decode: {exc}") from exc


def encode_session(session_row: tuple, task_rows: Sequence[tuple], compressor: zstandard.ZstdCompressor) -> bytes:
    """One session's frame: its row, then its tasks' rows."""
    lines = [_ENCODER.encode(dict(zip(SESSION_TABLE.columns, session_row)))]
    lines.extend(_ENCODER.encode(dict(zip(TASK_TABLE.columns, row))) for row in task_rows)
    return compressor.compress(b"\n".join(lines) + b"\n")


def decode_session(frame: bytes, session_id: str) -> tuple[tuple, list[tuple]]:
    """(session row, task rows) in the sink's column order."""
    objects = decode_lines(frame)
    if not objects or objects[0].get("session_id") != session_id or "task_id" in objects[0]:
        raise ArchiveDamaged(f"archive frame does not start with session {session_id!r}")
    session = tuple(objects[0].get(c) for c in SESSION_TABLE.columns)
    tasks = [tuple(o.get(c) for c in TASK_TABLE.columns) for o in objects[1:]]
    return session, tasks
