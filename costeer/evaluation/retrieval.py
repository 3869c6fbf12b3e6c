"""`python -m costeer retrieval`: does the personal context hold the entries that matter?

A labelled set (assets/eval/retrieval.jsonl) names, for a persona and a message, the entries a
person would call relevant. Pinned and profile entries are in every context, so they are neither
ranked nor labelled. recall@k is the share of a message's relevant entries among the first k
retrieved, averaged over messages, for keyword search alone (SQLite FTS5, BM25) and for the
hybrid the app uses (`UserStore.retrieve`). Timings are the store's own calls on this machine.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from costeer.evaluation.stats import bootstrap_ci

PERSONAS = Path(__file__).resolve().parents[2] / "assets" / "personas"
DEFAULT_SET = PERSONAS.parent / "eval" / "retrieval.jsonl"
KS = (1, 3, 5)


def load_set(path) -> list[dict]:
    """Rows of {persona (a file in assets/personas or a path), message, relevant: [titles]}."""
    from costeer.evaluation.eval import jsonl_rows

    rows = []
    for n, row in jsonl_rows(path):
        if not isinstance(row, dict) or not {"persona", "message", "relevant"} <= set(row):
            raise ValueError(f"{path}:{n}: each row needs persona, message and relevant")
        if not isinstance(row["message"], str) or not row["message"].strip():
            raise ValueError(f"{path}:{n}: message must be non-empty text")
        if not isinstance(row["relevant"], list) or not row["relevant"] or \
                not all(isinstance(t, str) for t in row["relevant"]):
            raise ValueError(f"{path}:{n}: relevant must be a non-empty list of entry titles")
        rows.append(row)
    return rows


def _persona_path(name: str, base: Path) -> Path:
    for candidate in (Path(name), base / name, PERSONAS / name):
        if candidate.is_file():
            return candidate
    raise ValueError(f"persona {name!r}: no such file (looked beside the set and in {PERSONAS})")


def recall(ranked: list[str], relevant: list[str], k: int) -> float:
    return len(set(ranked[:k]) & set(relevant)) / len(set(relevant))


def evaluate_retrieval(path=DEFAULT_SET) -> dict:
    """recall@k per method with bootstrap 95% intervals, and the store's timings."""
    from user_store import UserStore
    from user_store.store import RRF_DEPTH

    path = Path(path)
    rows = load_set(path)
    with tempfile.TemporaryDirectory(prefix="costeer-retrieval-") as tmp:
        store = UserStore(Path(tmp) / "retrieval.db")
        users = {}
        for row in rows:
            file = _persona_path(row["persona"], path.parent)
            if file not in users:
                users[file] = store.import_file(file)["user"]
        scores = {"keyword": {k: [] for k in KS}, "hybrid": {k: [] for k in KS}}
        context_ms, misses, context_recall, context_precision = [], [], [], []
        for row in rows:
            user = users[_persona_path(row["persona"], path.parent)]
            standing = {e["title"] for e in store.entries(user) if e["pinned"] or e["kind"] == "profile"}
            titles = {e["title"] for e in store.entries(user)}
            unknown = set(row["relevant"]) - titles
            if unknown:
                raise ValueError(f"{row['persona']}: no entries titled {sorted(unknown)}")
            keyword = [e["title"] for e in store.search(user, row["message"], k=RRF_DEPTH) if e["title"] not in standing]
            hybrid = [e["title"] for e in store.retrieve(user, row["message"], k=RRF_DEPTH) if e["title"] not in standing]
            for k in KS:
                scores["keyword"][k].append(recall(keyword, row["relevant"], k))
                scores["hybrid"][k].append(recall(hybrid, row["relevant"], k))
            start = time.perf_counter()
            used = store.context_entries(user, row["message"])
            context_ms.append(1000 * (time.perf_counter() - start))
            held = {e["title"] for e in used} - standing
            missing = set(row["relevant"]) - held
            if missing:
                misses.append({"message": row["message"], "missing": sorted(missing)})
            context_recall.append(1 - len(missing) / len(set(row["relevant"])))
            if held:  # what the context holds beyond the pinned and profile entries, and is relevant
                context_precision.append(len(held & set(row["relevant"])) / len(held))
        add_ms = []
        for i, row in enumerate(rows):
            start = time.perf_counter()
            store.add_entry(users[_persona_path(row["persona"], path.parent)], f"{row['message']} (note {i})")
            add_ms.append(1000 * (time.perf_counter() - start))
        store.close()
    out = {"rows": len(rows), "set": str(path), "recall": {}, "context_misses": misses}
    for method, by_k in scores.items():
        out["recall"][method] = {f"@{k}": {"mean": statistics.fmean(v), "ci": list(bootstrap_ci(v))}
                                 for k, v in by_k.items()}
    out["context"] = {"recall": statistics.fmean(context_recall), "recall_ci": list(bootstrap_ci(context_recall)),
                      "precision": statistics.fmean(context_precision) if context_precision else float("nan"),
                      "precision_ci": list(bootstrap_ci(context_precision)), "messages_with_retrieved": len(context_precision)}
    out["context_ms"] = _quantiles(context_ms)
    out["add_entry_ms"] = _quantiles(add_ms)
    return out


def _quantiles(values: list[float]) -> dict:
    cuts = statistics.quantiles(values, n=20)
    return {"p50": statistics.median(values), "p95": cuts[18], "max": max(values)}


def retrieval_table(result: dict) -> str:
    lines = [f"{'method':8s} " + " ".join(f"{'recall@' + str(k):>22s}" for k in KS)]
    for method, by_k in result["recall"].items():
        cells = [f"{v['mean']:.3f} [{v['ci'][0]:.2f},{v['ci'][1]:.2f}]" for v in by_k.values()]
        lines.append(f"{method:8s} " + " ".join(f"{c:>22s}" for c in cells))
    x = result["context"]
    lines.append(f"the context itself: recall {x['recall']:.3f} [{x['recall_ci'][0]:.2f},{x['recall_ci'][1]:.2f}], "
                 f"precision {x['precision']:.3f} [{x['precision_ci'][0]:.2f},{x['precision_ci'][1]:.2f}] "
                 "(of the retrieved entries it holds beyond the pinned and profile ones)")
    c, a = result["context_ms"], result["add_entry_ms"]
    lines.append(f"{result['rows']} messages; building a context: p50 {c['p50']:.1f} ms, p95 {c['p95']:.1f} ms; "
                 f"adding an entry: p50 {a['p50']:.1f} ms, p95 {a['p95']:.1f} ms")
    for miss in result["context_misses"]:
        lines.append(f"not in the context: {miss['message']!r} -> {', '.join(miss['missing'])}")
    return "\n".join(lines)
