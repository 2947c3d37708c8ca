"""What audit search matches, defined once: the text of an event that is
searched, how `q` splits into words, and when a word matches. Both search
backends implement this; `matches` is the rule itself (the SQLite backend's
fallback for words its indexes cannot serve, and the contract test's oracle).

- The searched text is the message and every string value of `details`
  (at any depth; keys are not searched).
- `q` splits on whitespace; every word must occur. Every character is text:
  quotes, `*`, `AND`, `%` are searched as written.
- A word matches where it occurs in the text ignoring case (a substring:
  matching inside a longer word is allowed). A backend may serve a short
  Latin word (one or two characters) by whole words only; `may_match` is the
  wider rule a backend must stay within, `must_match` the narrower one it
  must meet.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import msgspec

MAX_WORDS = 16
MAX_WORD_CHARS = 128

# Chinese, Japanese and Korean scripts: searchable by any substring of two characters or more.
_CJK_RANGES = ((0x1100, 0x11FF), (0x3040, 0x30FF), (0x3130, 0x318F), (0x31F0, 0x31FF), (0x3400, 0x4DBF),
               (0x4E00, 0x9FFF), (0xA960, 0xA97F), (0xAC00, 0xD7AF), (0xD7B0, 0xD7FF), (0xF900, 0xFAFF),
               (0xFF66, 0xFF9F), (0x20000, 0x3FFFF))

_CJK_RUN = re.compile("[" + "".join(f"{chr(low)}-{chr(high)}" for low, high in _CJK_RANGES) + "]+")


def is_cjk(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in _CJK_RANGES)


def search_text(message: str | None, details: str | None) -> str:
    """The text search looks in: the message, then each string value of the
    details (stored as JSON text), one per line."""
    parts = [message] if message else []
    if details:
        parts.extend(_strings(msgspec.json.decode(details)))
    return "\n".join(parts)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def words(q: str) -> list[str]:
    """The words of q (whitespace-separated, repeats dropped, order kept).
    Raises ValueError for a q that asks too much."""
    found = list(dict.fromkeys(q.split()))
    if len(found) > MAX_WORDS:
        raise ValueError(f"has {len(found)} words; at most {MAX_WORDS} are searched")
    long = [w for w in found if len(w) > MAX_WORD_CHARS]
    if long:
        raise ValueError(f"has a word longer than {MAX_WORD_CHARS} characters")
    return found


def is_short_latin(word: str) -> bool:
    """A word of one or two characters that is not all CJK: a backend may match it as a whole word only."""
    return len(word) <= 2 and not all(is_cjk(c) for c in word)


def matches(word: str, text: str) -> bool:
    """The rule: the word occurs in the text, ignoring case."""
    return word.casefold() in text.casefold()


def whole_word(word: str, text: str) -> bool:
    """The word occurs as a whole word (bounded by non-alphanumerics), ignoring case."""
    folded, target = text.casefold(), word.casefold()
    start = folded.find(target)
    while start >= 0:
        end = start + len(target)
        if (start == 0 or not folded[start - 1].isalnum()) and (end == len(folded) or not folded[end].isalnum()):
            return True
        start = folded.find(target, start + 1)
    return False


def must_match(words_: list[str], text: str) -> bool:
    """What every backend must find: every word occurs (short Latin words as whole words)."""
    return all(whole_word(w, text) if is_short_latin(w) else matches(w, text) for w in words_)


def may_match(words_: list[str], text: str) -> bool:
    """What a backend may find: every word occurs somewhere."""
    return all(matches(w, text) for w in words_)


def cjk_bigrams(text: str) -> str:
    """The text with every CJK run written as its overlapping two-character
    pairs, separated by spaces (a run of one character stays as it is); other
    text unchanged. Indexed by a word tokenizer, a two-character CJK word
    is then one token. The runs are found by a regular expression: the
    character-by-character loop it replaced was 44 of the ~100 µs the SQLite
    sink spent per event."""
    return _CJK_RUN.sub(_pairs, text)


def _pairs(run: re.Match[str]) -> str:
    chars = run.group()
    if len(chars) == 1:
        return f" {chars} "
    return " " + " ".join([chars[i:i + 2] for i in range(len(chars) - 1)]) + " "
