"""The one place that knows the LongLaMP shapes: a row holds `input`/`output` and a `profile`
(or `top_5`) of the user's past writings, each with its text under one of a few names."""
from __future__ import annotations

TEXT_FIELDS = ("text", "abstract", "review", "reviewText", "content")


def item_text(item) -> str | None:
    """The text of one profile item, or None when it has none."""
    if not isinstance(item, dict):
        return None
    return next((item[k] for k in TEXT_FIELDS if isinstance(item.get(k), str) and item[k].strip()), None)


def is_writing(item: dict) -> bool:
    """A LongLaMP item (abstract, review, ...) is a past writing; a bare `text` is a note."""
    return any(k in item for k in TEXT_FIELDS[1:])


def eval_row(d: dict) -> tuple[str, str, list] | None:
    """(query, reference, profile) of our JSONL or a LongLaMP row; None when it is neither."""
    query, reference = d.get("query", d.get("input")), d.get("reference", d.get("output"))
    profile = d.get("profile", d.get("top_5"))
    if not isinstance(query, str) or not isinstance(reference, str) or not isinstance(profile, list):
        return None
    return query, reference, profile


def card_line(entry: dict) -> str:
    """How an entry reads on a rater's persona card; the store removes exactly this text from the
    stored cards when the entry is deleted or marked sensitive."""
    return f"{entry['title']}: {entry['text']}" if entry.get("title") else entry["text"]


def without_line(card: str, line: str) -> str:
    """`card` with every copy of `line` removed, and a cut last line ("…") that began it."""
    lines = [x for x in card.replace(line, "").splitlines() if x.strip()]
    if lines and lines[-1].endswith("…") and line.startswith(lines[-1][:-1]):
        lines.pop()
    return "\n".join(lines)
