"""Builds multi-row INSERT statements as bytes.

pymysql escapes each value with str.translate over a 128-entry table, which
falls back to a slow path for every non-ASCII character: on CJK text that is
most of the flusher's CPU. Here a string is only rewritten when a regex (C
speed) finds a character that needs escaping. Valid with the session's
sql_mode, which keeps backslash escapes on (no NO_BACKSLASH_ESCAPES).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

_SPECIAL = re.compile(r"[\\'\"\0\n\r\x1a]")
_REPLACEMENTS = {"\\": "\\\\", "'": "\\'", '"': '\\"', "\0": "\\0", "\n": "\\n", "\r": "\\r", "\x1a": "\\Z"}


def _escape(match: re.Match[str]) -> str:
    return _REPLACEMENTS[match.group()]


def literal(value: object) -> str:
    """One SQL literal. Rows hold only None, str, int and float."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + (_SPECIAL.sub(_escape, value) if _SPECIAL.search(value) else value) + "'"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    raise TypeError(f"no SQL literal for {type(value).__name__}")


def statements(prefix: str, rows: Sequence[tuple], suffix: str, max_bytes: int) -> Iterator[bytes]:
    """`prefix (row),(row)... suffix` statements of at most max_bytes each
    (a single row larger than that still goes alone)."""
    head, tail = prefix.encode(), suffix.encode()
    parts: list[bytes] = []
    size = len(head) + len(tail)
    for row in rows:
        encoded = ("(" + ",".join(map(literal, row)) + ")").encode("utf-8")
        if parts and size + len(encoded) + 1 > max_bytes:
            yield head + b",".join(parts) + tail
            parts, size = [], len(head) + len(tail)
        parts.append(encoded)
        size += len(encoded) + 1
    if parts:
        yield head + b",".join(parts) + tail
