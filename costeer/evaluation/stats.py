"""Small statistics shared by the app's ratings view and the parameter explorer."""
from __future__ import annotations

import random
import re

OUTCOME = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def steered_outcome(vote: str, steered_side: str) -> str:
    """'win' / 'loss' for the steered answer, 'tie' for tie and both-bad (as Chatbot Arena counts)."""
    if vote in ("tie", "both_bad"):
        return "tie"
    return "win" if vote == steered_side else "loss"


def bootstrap_ci(values: list[float], stat=lambda xs: sum(xs) / len(xs), n_boot: int = 2000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat`; seeded so a table does not change on reload."""
    if not values:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(values)
    stats = sorted(stat([values[rng.randrange(n)] for _ in range(n)]) for _ in range(n_boot))
    lo = stats[int((1 - level) / 2 * n_boot)]
    hi = stats[min(n_boot - 1, int((1 + level) / 2 * n_boot))]
    return (lo, hi)


def win_rate(votes: list[dict]) -> dict:
    """Steered win rate (a tie counts half) with a bootstrap 95% interval and the counts."""
    outcomes = [steered_outcome(v["vote"], v["steered_side"]) for v in votes]
    scores = [OUTCOME[o] for o in outcomes]
    n = len(scores)
    rate = sum(scores) / n if n else float("nan")
    lo, hi = bootstrap_ci(scores)
    return {"n": n, "wins": outcomes.count("win"), "losses": outcomes.count("loss"),
            "ties": outcomes.count("tie"), "win_rate": rate, "ci_low": lo, "ci_high": hi}


def summarize_votes(votes: list[dict]) -> dict:
    """Counts by vote, overall steered win rate, and the same broken down by (T, eta, lam)."""
    by_vote = {k: 0 for k in ("A", "B", "tie", "both_bad")}
    for v in votes:
        by_vote[v["vote"]] += 1
    groups: dict[str, list[dict]] = {}
    for v in votes:
        p = v.get("params") or {}
        key = f"T={p.get('T')}, eta={p.get('eta')}, lam={p.get('lam')}"
        groups.setdefault(key, []).append(v)
    return {"counts": by_vote, "overall": win_rate(votes),
            "by_params": {k: win_rate(g) for k, g in sorted(groups.items())}}


_WORD = re.compile(r"[^\W\d_]{4,}", re.UNICODE)


def overlap_score(answer: str, history: str) -> float:
    """Share of the answer's distinct words (4+ letters) that also occur in the user's history:
    a crude, transparent personalization signal for the explorer, not a quality metric."""
    words = {w.lower() for w in _WORD.findall(answer)}
    if not words:
        return 0.0
    known = {w.lower() for w in _WORD.findall(history)}
    return len(words & known) / len(words)


def repeated_ngram_share(text, n: int = 4) -> float:
    """Share of the n-grams that already occurred earlier (0 = no loop; 0 when shorter than n).
    `text` is a string (its words are used) or a sequence of token ids."""
    words = re.findall(r"\w+", text.lower()) if isinstance(text, str) else list(text)
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    seen, repeats = set(), 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)
