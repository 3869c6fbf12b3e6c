"""`python -m costeer eval`: the paper's comparison on any model pair, with intervals.

Methods (the paper's baselines):
    llm        cloud model alone, no personal context
    slm_ctx    device model alone, with the context (what on-device alone gives)
    llm_ctx    cloud model with the context (the upper bound: it sends personal data)
    costeer    CoSteer with the paper's defaults; `costeer:T=..,eta=..,lam=..` for variants
    private    Private mode as the app runs it (a split transcript, steering/private.py);
               `costeer:private=M` for another margin M (nats)
The context comes from the profile through `user_store` retrieval, the code the app uses.
METEOR is not reported: it needs WordNet data, which cannot be downloaded here.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from costeer.engine.decoding import CoSteerEngine, ConfidenceGate, Sampling, system_with_context
from costeer.engine.spec import DecodeSpec
from costeer.engine.summary import ReplySummary
from costeer.evaluation.content import COPY_RUN, contradictions, copied_run
from costeer.evaluation.privacy import deny_list
from costeer.evaluation.stats import bootstrap_ci, repeated_ngram_share
from costeer.steering.defences import Defences
from costeer.steering.policy import SteeringParams, effective_strength
from costeer.steering.private import PRIVATE_MARGIN
from user_store.formats import eval_row, item_text

BASE_METHODS = ("llm", "slm_ctx", "llm_ctx", "costeer")  # the paper's comparison: eval's default
METHODS = (*BASE_METHODS, "private")
CONTEXT_TOKENS = 256  # the app's budget


@dataclass
class Row:
    id: str
    query: str
    profile: list[dict]
    reference: str
    user: str | None = None  # whose row: the privacy audit's attacker guesses it
    excludes: tuple[str, ...] = ()  # what the person excludes: an answer naming one contradicts them


def _check_row_text(path, n: int, fields: list[tuple[str, object]]):
    """Each text of a row is text a tokenizer and the store take: named by line and field."""
    from user_store.checks import text_problem

    for name, value in fields:
        if not isinstance(value, str):
            raise ValueError(f"{path}:{n}: {name} must be text, got {type(value).__name__}")
        problem = text_problem(value)
        if problem:
            raise ValueError(f"{path}:{n}: {name} {problem}")


def jsonl_rows(path):
    """(line number, value) for each non-blank line of a JSONL file; a bad line is a ValueError
    naming the file and the line."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise ValueError(f"{path}:{n}: nested too deeply to be a row") from None


def load_rows(path, limit: int | None = None) -> list[Row]:
    """Our JSONL (id, query, profile, reference) or LongLaMP-style (input, output, profile/top_5)."""
    rows = []
    for n, d in jsonl_rows(path):
        parsed = eval_row(d) if isinstance(d, dict) else None
        if parsed is None:
            raise ValueError(f"{path}:{n}: a row needs query/input (text), reference/output (text) and "
                             "profile/top_5 (a list)")
        query, reference, profile = parsed
        items = [{"title": item.get("title"), "text": text} for item in profile if (text := item_text(item))]
        _check_row_text(path, n, [("query", query), ("reference", reference)]
                        + [(f"profile[{i}].title", it["title"]) for i, it in enumerate(items) if it["title"] is not None]
                        + [(f"profile[{i}].text", it["text"]) for i, it in enumerate(items)])
        user = d.get("user")
        excludes = d.get("excludes", [])
        if not isinstance(excludes, list) or not all(isinstance(x, str) and x.strip() for x in excludes):
            raise ValueError(f"{path}:{n}: excludes must be a list of non-empty texts")
        _check_row_text(path, n, [(f"excludes[{i}]", x) for i, x in enumerate(excludes)])
        rows.append(Row(str(d.get("id", n)), query, items, reference, str(user) if user is not None else None,
                        tuple(x.strip() for x in excludes)))
        if limit and len(rows) >= limit:
            break
    return rows


METHOD_KEYS = ("T", "eta", "lam", "alpha", "beta", "gate", "patience", "mode", "sigma", "tau", "deny", "copy", "private")


def _method_parts(name: str) -> dict[str, str]:
    if name == "private":
        return {"private": str(PRIVATE_MARGIN)}
    parts = {}
    for part in name.split(":", 1)[1].split(","):
        key, _, value = part.partition("=")
        if key not in METHOD_KEYS or not value:
            raise ValueError(f"method {name!r}: expected key=value with key in {', '.join(METHOD_KEYS)}")
        parts[key] = value
    return parts


def method_spec(name: str) -> tuple[SteeringParams | None, ConfidenceGate | None]:
    """(None, None) for a baseline; params and optional gate for `costeer` or
    `costeer:T=5,lam=1` or `costeer:gate=0.1,patience=2`. The defences' keys (sigma, tau,
    deny) are read by `method_defences`."""
    if name in ("llm", "slm_ctx", "llm_ctx"):
        return None, None
    if name == "costeer":
        return SteeringParams(), None
    if name == "private":
        return SteeringParams(), None
    if not name.startswith("costeer:"):
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)} or costeer:T=..,eta=..,lam=..")
    kwargs, gate = {}, {}
    for key, value in _method_parts(name).items():
        if key in ("sigma", "tau", "deny", "copy", "private"):
            continue
        if key == "mode":
            gate["mode"] = value  # paper | reopen, checked by ConfidenceGate
            continue
        try:
            number = int(value) if key in ("T", "patience") else float(value)
        except ValueError:
            raise ValueError(f"method {name!r}: {key} must be a number, got {value!r}") from None
        if key == "gate":
            gate["threshold"] = number
        elif key == "patience":
            gate["patience"] = number
        else:
            kwargs[key] = number
    if gate and "threshold" not in gate:
        raise ValueError(f"method {name!r}: patience and mode need gate=THRESHOLD too")
    method_defences(name)
    return SteeringParams(**kwargs), (ConfidenceGate(**gate) if gate else None)


def method_defences(name: str) -> dict:
    """{"sigma", "tau", "deny", "copy"} of a CoSteer variant: `costeer:sigma=0.3,tau=2` adds noise,
    `costeer:deny=all` marks every history entry of the row sensitive (the deny-list),
    `costeer:copy=6` turns the copy guard on (no run of 6 context tokens)."""
    out = {"sigma": 0.0, "tau": None, "deny": False, "copy": 0, "private": None}
    if not name.startswith("costeer:") and name != "private":
        return out
    parts = _method_parts(name)
    for key in ("sigma", "tau", "private"):
        if key in parts:
            try:
                out[key] = float(parts[key])
            except ValueError:
                raise ValueError(f"method {name!r}: {key} must be a number, got {parts[key]!r}") from None
    if "copy" in parts:
        try:
            out["copy"] = int(parts["copy"])
        except ValueError:
            raise ValueError(f"method {name!r}: copy must be an integer (tokens), got {parts['copy']!r}") from None
    if "deny" in parts:
        if parts["deny"] != "all":
            raise ValueError(f"method {name!r}: deny must be 'all' (every history entry sensitive), got {parts['deny']!r}")
        out["deny"] = True
    try:
        Defences(tau=out["tau"], sigma=out["sigma"], copy_guard=out["copy"], private=out["private"])  # checked before any work
    except ValueError as exc:
        raise ValueError(f"method {name!r}: {exc}") from None
    return out


def row_defences(tokenizer, row, method: str):
    """The Defences a CoSteer variant runs with on this row (None for none): `deny=all` puts
    the words of every history entry's distinctive terms on the deny-list; the noise is seeded
    by the row's id, so a rerun gives the same answers."""
    variant = method_defences(method)
    if not (variant["deny"] or variant["sigma"] or variant["tau"] is not None or variant["copy"]
            or variant["private"] is not None):
        return None
    deny = deny_list([{**e, "sensitive": True} for e in row.profile], tokenizer) if variant["deny"] else ()
    return Defences(deny_ids=deny, tau=variant["tau"], sigma=variant["sigma"], seed=zlib.crc32(row.id.encode()),
                    copy_guard=variant["copy"], private=variant["private"])


def parse_method(name: str) -> SteeringParams | None:
    return method_spec(name)[0]


def scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def score(sc, text: str, reference: str) -> dict:
    s = sc.score(reference, text)
    return {"rouge1": s["rouge1"].fmeasure, "rougeL": s["rougeL"].fmeasure}


def summarize(results: list[dict], methods: list[str], baseline: str = "llm") -> dict:
    """Means with bootstrap 95% intervals per method, and paired wins against the baseline."""
    by = {m: {r["id"]: r for r in results if r["method"] == m} for m in methods}
    out = {}
    for m in methods:
        rs = list(by[m].values())
        if not rs:
            continue
        entry = {"n": len(rs)}
        for metric in ("rouge1", "rougeL"):
            vals = [r[metric] for r in rs]
            entry[metric] = statistics.fmean(vals)
            entry[f"{metric}_ci"] = list(bootstrap_ci(vals))
        entry["mean_words"] = statistics.fmean(len(r["text"].split()) for r in rs)
        entry["repeated_4gram_share"] = statistics.fmean(repeated_ngram_share(r["text"]) for r in rs)
        if all("fluency" in r for r in rs):  # the mean log-probability the cloud alone gives the answer's tokens
            entry["fluency"] = statistics.fmean(r["fluency"] for r in rs)
        if all("copied_run" in r for r in rs):
            copies = [float(r["copied_run"] >= COPY_RUN) for r in rs]
            entry["copy_rate"], entry["copy_rate_ci"] = statistics.fmean(copies), list(bootstrap_ci(copies))
        judged = [float(bool(r["contradicts"])) for r in rs if r.get("contradicts") is not None]
        if judged:
            entry["contradiction_rate"], entry["contradiction_rate_ci"] = statistics.fmean(judged), list(bootstrap_ci(judged))
            entry["contradiction_n"] = len(judged)
        secs = sum(r["seconds"] for r in rs)
        entry["tokens_per_s"] = sum(r["tokens"] for r in rs) / secs if secs > 0 else float("nan")
        params, gate = method_spec(m)
        if params is not None:
            entry["effective_strength"] = effective_strength(params)
        if gate is not None:
            entry["device_skip_share"] = sum(r.get("device_skipped", 0) for r in rs) / max(1, sum(r["tokens"] for r in rs))
        if m != baseline and by.get(baseline):
            common = [i for i in by[m] if i in by[baseline]]
            if common:
                diffs = [by[m][i]["rougeL"] - by[baseline][i]["rougeL"] for i in common]
                entry[f"vs_{baseline}"] = {"n": len(common), "win_share": sum(d > 0 for d in diffs) / len(common),
                                           "tie_share": sum(d == 0 for d in diffs) / len(common),
                                           "rougeL_diff": statistics.fmean(diffs),
                                           "rougeL_diff_ci": list(bootstrap_ci(diffs))}
        out[m] = entry
    return out


def table(summary: dict) -> str:
    lines = [f"{'method':24s} {'n':>3s} {'ROUGE-1':>22s} {'ROUGE-L':>22s} {'copy':>5s} {'contra':>6s} {'words':>6s} "
             f"{'rep4':>5s} {'tok/s':>6s} {'win vs llm':>10s}"]
    for m, e in summary.items():
        r1 = f"{e['rouge1']:.3f} [{e['rouge1_ci'][0]:.3f},{e['rouge1_ci'][1]:.3f}]"
        rl = f"{e['rougeL']:.3f} [{e['rougeL_ci'][0]:.3f},{e['rougeL_ci'][1]:.3f}]"
        win = f"{100 * e['vs_llm']['win_share']:.0f}%" if "vs_llm" in e else "–"
        copy = f"{e['copy_rate']:.2f}" if "copy_rate" in e else "–"
        contra = f"{e['contradiction_rate']:.2f}" if "contradiction_rate" in e else "–"
        lines.append(f"{m:24s} {e['n']:3d} {r1:>22s} {rl:>22s} {copy:>5s} {contra:>6s} {e['mean_words']:6.1f} "
                     f"{e['repeated_4gram_share']:5.2f} {e['tokens_per_s']:6.1f} {win:>10s}")
    lines.append(f"copy: share of answers holding a run of >= {COPY_RUN} tokens of their context (copied verbatim); "
                 "contra: share naming something the person excludes (rows with `excludes`).")
    lines.append("rep4: share of repeated word 4-grams in the answers (0 = no loops).")
    lines.append("METEOR: not reported (it needs WordNet data, which cannot be downloaded here).")
    return "\n".join(lines)


class Evaluator:
    """Runs methods on rows; one temporary user store holds each row's profile as a user."""

    def __init__(self, engine: CoSteerEngine, max_new_tokens: int = 128, sampling: Sampling | None = None):
        from user_store import UserStore

        self.engine = engine
        self.device_alone = engine if engine.same_model else CoSteerEngine.one_model(engine.device.lm)
        self.sampling = sampling or Sampling(max_new_tokens=max_new_tokens)
        self._tmp = tempfile.TemporaryDirectory(prefix="costeer-eval-")
        self.store = UserStore(Path(self._tmp.name) / "eval.db")
        self.sc = scorer()

    def context(self, row: Row) -> str:
        user = f"eval:{row.id}"
        if row.profile:
            self.store.import_user(row.profile, mode="replace", user=user)
        else:
            self.store.add_user(user)
        tok = self.engine.device.tokenizer
        return self.store.build_context(user, row.query, max_tokens=CONTEXT_TOKENS,
                                        count_tokens=lambda s: len(tok(s, add_special_tokens=False)["input_ids"]))

    def run(self, row: Row, method: str, context: str, audit=None) -> dict:
        """One answer; with `audit` (audit.PrivacyAudit), also what the cloud could learn from it."""
        from costeer.engine.decoding import CloudTranscript

        params, gate = method_spec(method)
        defences = row_defences(self.engine.cloud.tokenizer, row, method)
        question = [{"role": "user", "content": row.query}]
        with_context = [{"role": "system", "content": system_with_context(context)}] + question
        if method == "llm":
            engine, messages, mode, ctx = self.engine, question, "unsteered", ""
        elif method == "llm_ctx":
            engine, messages, mode, ctx = self.engine, with_context, "unsteered", ""
        elif method == "slm_ctx":
            engine, messages, mode, ctx = self.device_alone, with_context, "unsteered", ""
        else:
            engine, messages, mode, ctx = self.engine, question, "steered", context
        transcript = CloudTranscript()
        start = time.perf_counter()
        spec = DecodeSpec(mode, params or SteeringParams(), self.sampling, gate=gate, defences=defences)
        answer = ReplySummary.of(engine.stream(messages, ctx, spec, transcript))[mode]
        seconds = time.perf_counter() - start
        margin = answer.deny_margin if defences is not None and defences.deny_ids else None
        found = contradictions(answer.text, list(row.excludes))
        out = {"id": row.id, "method": method, "text": answer.text, "tokens": answer.tokens, "seconds": seconds,
               "copied_run": copied_run(self.engine.cloud.tokenizer, answer.text, context), "fluency": answer.fluency,
               "contradicts": found if row.excludes else None,
               "device_skipped": answer.device_skipped, "repeated_4grams": repeated_ngram_share(answer.text),
               "deny_margin": margin, **score(self.sc, answer.text, row.reference)}
        if audit is not None:
            out.update(audit.measure(row, method, transcript, None if method == "slm_ctx" else mode))
        return out


def evaluate(engine, rows: list[Row], methods: list[str], max_new_tokens: int = 128, out: str | None = None,
             progress: bool = True, sampling: Sampling | None = None, privacy: bool = False) -> tuple[dict, list[dict]]:
    """Run every (row, method) not already in `out` (resume by id), append to `out`, summarize all.
    With `privacy`, each result also carries the audit's figures (a stored result without them
    is run again)."""
    from tqdm import tqdm

    for m in methods:
        method_spec(m)  # check every name before any work
    done = []
    if out and Path(out).exists():
        with open(out, encoding="utf-8") as f:
            done = [json.loads(line) for line in f if line.strip()]
    if privacy:  # a stored result from before the calibrated attacker is run again
        done = [r for r in done if "exposure" in r and ("attacker_correct" not in r or "attacker_top3" in r)]
    have = {(r["id"], r["method"]) for r in done}
    ids = {r.id for r in rows}
    todo = [(row, m) for row in rows for m in methods if (row.id, m) not in have]
    ev = Evaluator(engine, max_new_tokens, sampling)
    audit = None
    if privacy:
        from costeer.evaluation.audit import PrivacyAudit

        audit = PrivacyAudit(engine, rows, ev.sampling)
    results = [r for r in done if r["id"] in ids and r["method"] in methods]
    contexts: dict[str, str] = {}
    sink = open(out, "a", encoding="utf-8") if out else None
    try:
        for row, m in tqdm(todo, desc="eval", disable=not progress, file=sys.stderr):
            if row.id not in contexts:
                contexts[row.id] = ev.context(row)
            r = ev.run(row, m, contexts[row.id], audit)
            results.append(r)
            if sink:
                sink.write(json.dumps(r, ensure_ascii=False) + "\n")
                sink.flush()
    finally:
        if sink:
            sink.close()
    return summarize(results, methods), results


SWEEP_KEYS = ("T", "eta", "lam", "sigma", "tau")
PRIVACY_SWEEPS = ("sigma", "tau")  # their plot is the privacy-utility curve


def sweep_methods(spec: str) -> tuple[str, list[float], list[str]]:
    """'lam=0.5,1,2,4' -> ('lam', [0.5, 1, 2, 4], ['costeer:lam=0.5', ...])."""
    key, _, values = spec.partition("=")
    if key not in SWEEP_KEYS or not values:
        raise ValueError(f"--sweep must look like lam=0.5,1,2 (key {', '.join(SWEEP_KEYS)}), got {spec!r}")
    try:
        nums = [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--sweep values must be numbers, got {values!r}") from None
    fmt = (lambda v: str(int(v))) if key == "T" else (lambda v: f"{v:g}")
    return key, nums, [f"costeer:{key}={fmt(v)}" for v in nums]


def plot_sweep(summary: dict, key: str, values: list[float], methods: list[str], path: str, metric: str = "rougeL"):
    import matplotlib.pyplot as plt

    from costeer.evaluation.plots import score_and_strength

    ys = [summary[m][metric] for m in methods]
    lo = [summary[m][metric] - summary[m][f"{metric}_ci"][0] for m in methods]
    hi = [summary[m][f"{metric}_ci"][1] - summary[m][metric] for m in methods]
    fig = score_and_strength(values, ys, [summary[m]["effective_strength"] for m in methods], key, metric,
                             f"{metric} (95% CI)", yerr=[lo, hi])
    fig.savefig(path, dpi=120)
    plt.close(fig)
