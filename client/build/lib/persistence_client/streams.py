"""Reading long answers as they arrive, in bounded memory.

The restore answer is one JSON object whose `tasks` array may hold hundreds
of thousands of tasks; ArrayItems finds each element of that array in the
byte stream (tracking strings, escapes and nesting) and hands it to msgspec
whole, so the client holds one chunk and one task at a time. The audit
export in NDJSON is one event per line (JSON escapes every newline inside a
string), so lines are events."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

_OUTSIDE = re.compile(rb'["{}\[\]]')
_INSIDE = re.compile(rb'["\\]')


class ArrayItems:
    """Feed the document's bytes; get the raw elements of the top-level
    object's array under `key`, and the rest of the document (with that
    array left empty) once it has all arrived."""

    def __init__(self, key: str) -> None:
        self._opener = b'"' + key.encode() + b'"'
        self._buf = bytearray()
        self._pos = 0  # scanned up to here
        self._depth = 0
        self._in_string = False
        self._in_array = False
        self._item_start: int | None = None
        self.opened = False  # the array has begun: what precedes it is all in rest
        self.rest = bytearray()  # the document without the array's elements

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        items: list[bytes] = []
        buf = self._buf
        pos = self._pos
        while True:
            if self._in_string:
                m = _INSIDE.search(buf, pos)
                if m is None:
                    pos = len(buf)
                    break
                if buf[m.start()] == 0x5C:  # a backslash: skip the escaped character
                    if m.start() + 1 >= len(buf):
                        pos = m.start()
                        break
                    pos = m.start() + 2
                    continue
                self._in_string = False
                pos = m.end()
                continue
            m = _OUTSIDE.search(buf, pos)
            if m is None:
                pos = len(buf)
                break
            char = buf[m.start()]
            pos = m.end()
            if char == 0x22:  # "
                self._in_string = True
            elif char in (0x7B, 0x5B):  # { [
                if self._depth == 1 and char == 0x5B and self._ends_with_key(buf, m.start()):
                    self._in_array = self.opened = True
                    self.rest += buf[:pos]
                    del buf[:pos]
                    pos = 0
                elif self._in_array and self._depth == 2:
                    self._item_start = m.start()
                self._depth += 1
            else:  # } ]
                self._depth -= 1
                if self._in_array and self._depth == 2 and self._item_start is not None:
                    items.append(bytes(buf[self._item_start:pos]))
                    self._item_start = None
                elif self._in_array and self._depth == 1:  # the array closed
                    self._in_array = False
                    self.rest += b"]"
                    del buf[:pos]
                    pos = 0
            if self._in_array and self._item_start is None and self._depth == 2:
                del buf[:pos]  # elements handed out: drop them
                pos = 0
        if not self._in_array:
            self.rest += buf[:pos]
            del buf[:pos]
            pos = 0
        self._pos = pos
        return items

    def head(self) -> bytes:
        """What precedes the array, as a complete JSON object (once opened)."""
        return bytes(self.rest) + b"]}" if self._in_array else bytes(self.rest)

    def _ends_with_key(self, buf: bytearray, at: int) -> bool:
        head = (bytes(self.rest) + bytes(buf[:at])).rstrip()
        if not head.endswith(b":"):
            return False
        return head[:-1].rstrip().endswith(self._opener)


def ndjson_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The non-empty lines of a byte stream."""
    tail = b""
    for chunk in chunks:
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        yield from (line for line in lines if line.strip())
    if tail.strip():
        yield tail
