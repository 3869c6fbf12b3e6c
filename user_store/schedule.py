"""Which pair a rater sees next, and on which side each answer goes.

Balanced: the least-rated pair first, and each pair's setting shown as A as often as as B across
raters. A rater never gets a pair twice, except as an attention check: after every
`attention_every` votes, one of their earlier pairs comes back with the sides swapped. A rater
whose second vote disagrees with the first is flagged in the results, not dropped.
"""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    pair_id: int
    setting_a: int
    setting_b: int
    issued: int  # how often the pair was issued to anyone (attention repeats not counted)
    a_left: int  # how often setting_a was shown as A


def checks_in(target: int, every: int) -> int:
    """How many attention checks a rater of `target` pairs gets: one after every `every`."""
    return target // every if every > 0 else 0


def attention_due(voted: int, checks: int, every: int) -> bool:
    """One check after every `every` first-time votes (0 turns checks off)."""
    return every > 0 and voted > 0 and checks < voted // every


def choose(candidates: list[Candidate], rng: random.Random) -> tuple[Candidate, int] | None:
    """The least-issued pair (ties broken at random) and the setting to show as A."""
    if not candidates:
        return None
    fewest = min(c.issued for c in candidates)
    pick = rng.choice([c for c in candidates if c.issued == fewest])
    a_right = pick.issued - pick.a_left
    if pick.a_left == a_right:
        left = rng.choice((pick.setting_a, pick.setting_b))
    else:
        left = pick.setting_a if pick.a_left < a_right else pick.setting_b
    return pick, left


def swapped(left: int, setting_a: int, setting_b: int) -> int:
    """An attention check shows the other setting as A."""
    return setting_b if left == setting_a else setting_a
