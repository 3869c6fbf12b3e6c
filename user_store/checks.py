"""Text the store will keep: real Unicode text, no NUL bytes.

A lone surrogate (half of a UTF-16 pair, e.g. from a broken JSON escape "\\ud83d") cannot be
encoded as UTF-8, so SQLite would refuse it halfway through a write; a NUL byte truncates text in
many tools that read the file later. Both are refused up front with the position, nothing written.
"""
from __future__ import annotations

import re

_BAD = re.compile(r"[\ud800-\udfff\x00]")


def text_problem(value: str) -> str | None:
    """Why `value` is not storable text, or None."""
    m = _BAD.search(value)
    if m is None:
        return None
    ch = m.group()
    what = "a NUL character" if ch == "\x00" else f"a lone surrogate (U+{ord(ch):04X}, half of an emoji or other character)"
    return f"contains {what} at character {m.start() + 1}; remove it and try again"


VOTES = ("A", "B", "tie", "both_bad")  # a rater's choice between two answers
