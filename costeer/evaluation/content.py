"""What an answer does with the personal context: copy it, or contradict it.

- **Verbatim copy**: the longest run of consecutive tokens an answer shares with its context.
  A run of COPY_RUN tokens or more counts as a copy: a steered answer's tokens are what the
  cloud receives, so a copied run is a piece of the history sent to the cloud word for word.
- **Contradiction**: a persona lists what they exclude ("meat", "karaoke", "beer" for a
  sixteen-year-old); an answer that names one, not negated ("no meat", "meat-free"),
  contradicts the history it was steered with.
"""
from __future__ import annotations

import re

COPY_RUN = 8  # tokens: about five or six English words
NEGATIONS = ("no", "not", "without", "avoid", "avoiding", "skip", "never", "don't", "instead", "free", "except",
             "nor", "non")
_WORD = re.compile(r"[\w'’-]+")


def longest_copied_run(answer_ids: list[int], context_ids: list[int]) -> int:
    """The longest common substring of two token lists (dynamic programming, O(len × len))."""
    if not answer_ids or not context_ids:
        return 0
    best, previous = 0, [0] * (len(context_ids) + 1)
    for a in answer_ids:
        current = [0] * (len(context_ids) + 1)
        for j, c in enumerate(context_ids, 1):
            if a == c:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def copied_run(tokenizer, answer: str, context: str) -> int:
    """The longest run of the context's tokens in the answer, both tokenized the same way."""
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    return longest_copied_run(encode(answer), encode(context)) if answer.strip() and context.strip() else 0


def contradictions(answer: str, excludes: list[str]) -> list[str]:
    """The excluded terms an answer names without negating them (within three words before, or
    as "X-free"). A term may be several words ("loud bars"); plurals count ("steaks")."""
    words = [w.lower().strip("'’-") for w in _WORD.findall(answer)]
    found = []
    for term in excludes:
        parts = term.lower().split()
        n = len(parts)
        for i in range(len(words) - n + 1):
            window = words[i:i + n]
            if all(w == p or w in (p + "s", p + "es") or w == p + "-free" for w, p in zip(window, parts)):
                negated = window[-1].endswith("-free") or any(
                    w in NEGATIONS or w.startswith("no-") for w in words[max(0, i - 3):i])
                if not negated:
                    found.append(term)
                    break
    return found
