"""Which setting do raters prefer, how sure is that, and can the raters be trusted.

Battles are FastChat's shape: `model_a` is the setting shown as A, `model_b` the one shown as B,
`winner` one of model_a / model_b / tie / tie (bothbad). From them:

- Bradley–Terry: P(i beats j) = σ(θ_i − θ_j), a tie counted as half a win each way, fitted by
  Newton's method with the L2 term FastChat's `compute_elo_mle_with_tie` gets from scikit-learn's
  default (C = 1 on its log10 coefficients, on doubled battles), so both give the same ratings.
  Shown on the Elo scale (400 / ln 10 per nat) with the unsteered baseline at 1000.
- 95 % intervals from 1000 bootstrap resamples of the battles (all rounds fitted at once).
- Style control (as Chatbot Arena's): the same fit with two covariates, the normalised length
  difference and list-markup difference of the two answers, so a setting is not credited for
  being longer or more bulleted.
- The win-rate matrix, position bias (share of decided votes won by side A), Krippendorff's α
  (ordinal) over pairs rated by two or more raters, and attention checks per rater.
Attention repeats are kept out of the fits (they would count one judgement twice) and used only
to check the rater.
"""
from __future__ import annotations

import math
import re

import numpy as np

SCALE = 400 / math.log(10)  # Elo points per nat
ANCHOR = 1000.0
RIDGE = 0.5 / math.log(10) ** 2  # FastChat's default regularisation, in our units (see module doc)
ROUNDS = 1000
FLAG_BELOW = 0.75  # a rater passing fewer attention checks than this share is flagged
LIST_LINE = re.compile(r"^\s*(?:[-*•+]|\d+[.)])\s+", re.MULTILINE)
WINNER_SCORE = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}


def winner_of(choice: str) -> str:
    return {"A": "model_a", "B": "model_b", "tie": "tie", "both_bad": "tie (bothbad)"}[choice]


def list_lines(text: str) -> int:
    return len(LIST_LINE.findall(text or ""))


# -- Bradley–Terry ---------------------------------------------------------------------------
def fit(X: np.ndarray, y: np.ndarray, weights: np.ndarray, ridge: float = RIDGE, iters: int = 50) -> np.ndarray:
    """Penalised logistic regression without intercept, for R weightings at once.

    X (n, p) rows are e_a − e_b (plus covariates), y (n,) the score of the A side (1, ½, 0),
    weights (R, n) how often each battle counts in each round. Returns (R, p)."""
    R, p = weights.shape[0], X.shape[1]
    beta = np.zeros((R, p))
    eye = np.eye(p) * ridge
    for _ in range(iters):
        prob = 1 / (1 + np.exp(-(beta @ X.T)))  # (R, n)
        grad = (weights * (y - prob)) @ X - ridge * beta
        hess = np.einsum("rn,ni,nj->rij", weights * prob * (1 - prob), X, X) + eye
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        beta += step
        if np.abs(step).max() < 1e-9:
            break
    return beta


def _design(battles: list[dict], names: list[str], style: bool) -> tuple[np.ndarray, np.ndarray]:
    index = {n: i for i, n in enumerate(names)}
    X = np.zeros((len(battles), len(names) + (2 if style else 0)))
    for row, b in enumerate(battles):
        X[row, index[b["model_a"]]] += 1
        X[row, index[b["model_b"]]] -= 1
    if style:
        feats = np.array([[_norm_diff(b["tokens_a"], b["tokens_b"]), _norm_diff(b["lists_a"], b["lists_b"])]
                          for b in battles], dtype=float)
        sd = feats.std(axis=0)
        X[:, len(names):] = (feats - feats.mean(axis=0)) / np.where(sd > 0, sd, 1)
    y = np.array([WINNER_SCORE[b["winner"]] for b in battles])
    return X, y


def _norm_diff(a: float, b: float) -> float:
    return (a - b) / (a + b) if a + b else 0.0


def ratings(battles: list[dict], names: list[str], anchor: str, style: bool = False, rounds: int = ROUNDS,
            seed: int = 0) -> dict:
    """{"scores": {name: {score, low, high, battles}}, "style": {length, lists} or None}."""
    if not battles:
        return {"scores": {n: {"score": None, "low": None, "high": None, "battles": 0} for n in names}, "style": None}
    X, y = _design(battles, names, style)
    n = len(battles)
    rng = np.random.default_rng(seed)
    weights = np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1 / n), size=rounds)])
    beta = fit(X, y, weights)
    k = names.index(anchor)
    elo = ANCHOR + SCALE * (beta[:, :len(names)] - beta[:, [k]])
    counts = np.abs(X[:, :len(names)]).sum(axis=0)
    scores = {}
    for i, name in enumerate(names):
        if not counts[i]:
            scores[name] = {"score": None, "low": None, "high": None, "battles": 0}
            continue
        low, high = np.percentile(elo[1:, i], [2.5, 97.5])
        scores[name] = {"score": float(elo[0, i]), "low": float(low), "high": float(high), "battles": int(counts[i])}
    coef = None
    if style:
        coef = {"length": float(beta[0, len(names)]), "lists": float(beta[0, len(names) + 1])}
    return {"scores": scores, "style": coef}


# -- the other numbers -----------------------------------------------------------------------
def win_matrix(battles: list[dict], names: list[str]) -> dict:
    """row's win share against column (tie = ½), over the battles between the two; None if none."""
    tally = {(a, b): [0.0, 0] for a in names for b in names}
    for bt in battles:
        s = WINNER_SCORE[bt["winner"]]
        for a, b, score in ((bt["model_a"], bt["model_b"], s), (bt["model_b"], bt["model_a"], 1 - s)):
            tally[a, b][0] += score
            tally[a, b][1] += 1
    return {a: {b: (tally[a, b][0] / tally[a, b][1] if tally[a, b][1] else None) for b in names} for a in names}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float | None, float | None]:
    if not n:
        return (None, None)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def position_bias(battles: list[dict]) -> dict:
    decided = [b for b in battles if b["winner"] in ("model_a", "model_b")]
    a_wins = sum(b["winner"] == "model_a" for b in decided)
    low, high = wilson(a_wins, len(decided))
    return {"a_share": a_wins / len(decided) if decided else None, "low": low, "high": high, "decided": len(decided)}


def _canonical(b: dict) -> int:
    """+1 if the pair's first setting won, −1 if its second, 0 for a tie: the same for A/B and B/A."""
    s = WINNER_SCORE[b["winner"]]
    if s == 0.5:
        return 0
    first_won = (s == 1.0) == (b["model_a"] == b["first"])
    return 1 if first_won else -1


def agreement(battles: list[dict]) -> dict:
    """Krippendorff's α (ordinal: first wins > tie > second wins) over pairs rated by ≥ 2 raters."""
    import krippendorff

    by_pair: dict[int, dict[str, int]] = {}
    for b in battles:
        by_pair.setdefault(b["question_id"], {})[b["judge"]] = _canonical(b)
    shared = {q: r for q, r in by_pair.items() if len(r) >= 2}
    judges = sorted({j for r in shared.values() for j in r})
    result = {"alpha": None, "pairs": len(shared), "raters": len(judges), "level": "ordinal"}
    if len(shared) < 2:
        result["why"] = "needs two or more pairs rated by two or more raters"
        return result
    data = np.full((len(judges), len(shared)), np.nan)
    for col, ratings_ in enumerate(shared.values()):
        for j, value in ratings_.items():
            data[judges.index(j), col] = value
    values = data[~np.isnan(data)]
    if len(set(values.tolist())) < 2:
        result["why"] = "every rating is the same, so agreement is undefined (α needs variation)"
        return result
    result["alpha"] = float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal",
                                               value_domain=[-1, 0, 1]))
    return result


def attention(first: list[dict], repeats: list[dict]) -> dict:
    """Each check passed or not. A repeat: against the rater's first vote on the same pair (sides
    swapped, same judgement expected; a tie and a both-bad count as the same judgement). A silent
    check (`fits` set): passed when the answer that fits the card wins."""
    original = {b["issue"]: b for b in first}
    per_rater: dict[str, list[bool]] = {}
    for r in repeats:
        if r.get("fits"):
            per_rater.setdefault(r["judge"], []).append(r["winner"] == f"model_{r['fits'].lower()}")
            continue
        o = original.get(r["attention_of"])
        if o is not None:
            per_rater.setdefault(r["judge"], []).append(_canonical(o) == _canonical(r))
    raters = {j: {"checks": len(v), "passed": sum(v), "rate": sum(v) / len(v), "flagged": sum(v) / len(v) < FLAG_BELOW}
              for j, v in per_rater.items()}
    checks = sum(r["checks"] for r in raters.values())
    passed = sum(r["passed"] for r in raters.values())
    return {"checks": checks, "passed": passed, "rate": passed / checks if checks else None, "raters": raters,
            "flagged": sorted(j for j, r in raters.items() if r["flagged"])}


def leaderboard(battles: list[dict], names: list[str], anchor: str, rounds: int = ROUNDS,
                exclude_flagged: bool = False, seed: int = 0) -> dict:
    """Everything the Results view shows, from the study's battles (studies/export.battles)."""
    first = [b for b in battles if b["attention_of"] is None]
    checks = attention(first, [b for b in battles if b["attention_of"] is not None])
    if exclude_flagged:
        first = [b for b in first if b["judge"] not in checks["flagged"]]
    personas = sorted({b["persona"] for b in first})
    return {
        "votes": len(first), "raters": len({b["judge"] for b in first}), "rounds": rounds,
        "plain": ratings(first, names, anchor, rounds=rounds, seed=seed),
        "style_controlled": ratings(first, names, anchor, style=True, rounds=rounds, seed=seed),
        "win_matrix": win_matrix(first, names),
        "by_persona": {p: ratings([b for b in first if b["persona"] == p], names, anchor, rounds=rounds, seed=seed)
                       for p in personas},
        "position_bias": position_bias(first),
        "agreement": agreement(first),
        "attention": checks,
        "excluded_flagged": exclude_flagged,
    }
