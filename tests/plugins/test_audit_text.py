"""cjk_bigrams, the text the SQLite sink's word index holds, against the
plain character-by-character definition, over random text that mixes CJK,
Latin and the characters at each edge of every CJK range."""

from __future__ import annotations

import random

from plugins.audit.text import _CJK_RANGES, cjk_bigrams, is_cjk


def reference(text: str) -> str:
    out: list[str] = []
    run: list[str] = []
    for char in [*text, None]:
        if char is not None and is_cjk(char):
            run.append(char)
            continue
        if len(run) == 1:
            out.append(f" {run[0]} ")
        elif run:
            out.append(" " + " ".join(run[i] + run[i + 1] for i in range(len(run) - 1)) + " ")
        run = []
        if char is not None:
            out.append(char)
    return "".join(out)


def test_cjk_bigrams_is_the_definition(rng: random.Random) -> None:
    edges = [chr(c) for low, high in _CJK_RANGES for c in (low - 1, low, high, high + 1)]
    alphabet = [*edges, *"翻译完成机器テスト한국어 aZ9-\n\t]\\^", "\U0001F600"]
    assert cjk_bigrams("机器翻译 done") == " 机器 器翻 翻译  done"
    assert cjk_bigrams("a翻b") == "a 翻 b"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        assert cjk_bigrams(text) == reference(text), repr(text)
