"""Incremental detokenization with stop strings, for one answer.

Each step decodes only a short window of ids (prefix/read offsets, as vLLM's and transformers'
streamers do), so an answer of n tokens costs O(n), and text is appended, never re-derived.
With stop strings, the last `max(len(stop)) - 1` characters are held back until they can no
longer start a stop string, so no part of a stop string is ever streamed; `flush` releases the
rest when the answer ends for another reason.
"""
from __future__ import annotations

import re

# a sentence ends at . ! ? followed by a space or the end, or at 。！？ (no spaces in CJK text),
# either perhaps followed by a closing quote or bracket; a line break ends a list item
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*(?=\s|$)|[\u3002\uff01\uff1f][\u300d\u300f)\]]*|\n")


def _list_number(text: str, at: int) -> bool:
    """The "." of "2." at a line's start numbers a list item; it ends no sentence."""
    return text[text.rfind("\n", 0, at) + 1:at].strip().isdigit()


def end_on_sentence(text: str, finish: str | None, tokens: int) -> str:
    """The answer as readers see it: one that max_new_tokens cut ends at its last sentence
    boundary, with a visible mark, so nobody (a presenter, a rater) judges half a sentence. The
    cloud still received every token; this changes what is shown, not what was sent."""
    if finish != "length":
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text.rstrip()) if not _list_number(text, m.start())]
    kept = text[:ends[-1]].rstrip() if ends else text.rstrip()
    return f"{kept} (cut at {tokens} tokens)"


class TextStream:
    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.prefix_offset = self.read_offset = 0
        self.text = ""  # everything decoded so far
        self.emitted = 0  # characters of `text` already handed out

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> tuple[str, bool]:
        """Append a token; return (text safe to show now, hit a stop string)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        window = self._decode(self.ids[self.prefix_offset:])
        if len(window) > len(prefix) and not window.endswith("\ufffd"):  # \ufffd: a UTF-8 sequence still open
            self.text += window[len(prefix):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        hits = [at for at in (self.text.find(s, self.emitted) for s in self.stop) if at != -1]
        if hits:
            at = min(hits)
            new, self.emitted = self.text[self.emitted:at], at
            return new, True
        safe = max(self.emitted, len(self.text) - self.hold)
        new, self.emitted = self.text[self.emitted:safe], safe
        return new, False

    def flush(self) -> str:
        """The held-back tail, when the answer ends without a stop string."""
        new, self.emitted = self.text[self.emitted:], len(self.text)
        return new

