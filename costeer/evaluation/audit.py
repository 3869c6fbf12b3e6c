"""`python -m costeer eval --privacy`: what the cloud learns under each method, beside ROUGE.

Per (row, method), on what the cloud received (its prompt + the chosen tokens, decoded):
    exposure    share of the row user's distinctive terms (privacy.py) in it
    attacker    the personas ranked by how much each one's profile raises the cloud's own
                model's likelihood of the reply, over its lift on the cloud's own no-context
                answer to the same message (privacy.PersonaAttacker); top-1 and top-3 credit
                (equal scores ordered at random, so a tie of all N earns chance)
Summaries carry 95% bootstrap intervals over rows, the exposure steering adds over the
unsteered `llm` answer to the same message (paired), the attacker's chance level 1/N, and the
*marginal leakage*: the attacker's top-1 accuracy minus its accuracy on the `llm` answers to the
same rows (paired), the framing of P3 (arXiv 2601.17569).
`slm_ctx` sends nothing to the cloud, so it has no privacy figures.
"""
from __future__ import annotations

import statistics
from collections import Counter

from costeer.evaluation.privacy import PersonaAttacker, cloud_view, distinctive_terms, exposure
from costeer.evaluation.stats import bootstrap_ci


def attacker_model(engine):
    """The cloud's model when it runs in this process; else the device's, standing in for it."""
    lm = getattr(engine.cloud, "lm", None)
    return (lm, "the cloud model") if lm is not None else (engine.device.lm, "the device model, standing in for the cloud")


class PrivacyAudit:
    def __init__(self, engine, rows, sampling=None):
        from costeer.engine.sampling import Sampling

        self.attacker = PersonaAttacker(attacker_model(engine)[0])
        self.engine, self.sampling = engine, sampling or Sampling()
        self._reference: dict[str, list[int]] = {}
        personas = {}  # user -> one row of theirs (a user's profile is the same on all rows)
        for row in rows:
            if row.user is not None:
                personas.setdefault(row.user, row)
        self.profiles = {u: self.attacker.profile(r.profile) for u, r in personas.items()}

    @property
    def can_attack(self) -> bool:
        return len(self.profiles) >= 2

    def measure(self, row, method: str, transcript, stream: str | None) -> dict:
        if stream is None:  # slm_ctx: the device alone, nothing sent
            return {"exposure": None}
        reply = transcript.token_ids[stream]
        terms = distinctive_terms(row.profile, [row.query])
        found = exposure(terms, "".join(cloud_view(transcript, stream, self.engine.cloud.tokenizer)))
        out = {"exposure": found.share, "exposed": [t.text for t in found.exposed], "terms": found.terms,
               "user": row.user}
        if self.can_attack and row.user is not None:
            messages = [{"role": "user", "content": row.query}]
            if method == "llm":  # the cloud alone, with the eval's sampling: the reference itself
                self._reference.setdefault(row.id, list(reply))
            guess = self.attacker.guess(messages, reply, self.profiles, self.reference(row, messages))
            out.update(attacker_guess=guess.name, attacker_correct=guess.credit(row.user),
                       attacker_top3=guess.credit(row.user, 3),
                       attacker_posterior=guess.posterior[row.user], candidates=len(self.profiles))
        return out

    def reference(self, row, messages) -> list[int]:
        """The cloud's own answer to the row's message, with no one's data: what it can compute
        itself, and what the attacker measures each profile's lift against."""
        from costeer.engine.decoding import CloudTranscript
        from costeer.engine.spec import DecodeSpec

        if row.id not in self._reference:
            transcript = CloudTranscript()
            for _ in self.engine.stream(messages, "", DecodeSpec("unsteered", sampling=self.sampling), transcript):
                pass
            self._reference[row.id] = transcript.token_ids["unsteered"]
        return self._reference[row.id]


def summarize_privacy(results: list[dict], methods: list[str], baseline: str = "llm") -> dict:
    by = {m: {r["id"]: r for r in results if r["method"] == m and r.get("exposure") is not None} for m in methods}
    out = {}
    for m in methods:
        rs = list(by[m].values())
        if not rs:
            continue
        shares = [r["exposure"] for r in rs]
        entry = {"n": len(rs), "exposure": statistics.fmean(shares), "exposure_ci": list(bootstrap_ci(shares)),
                 "exposed_terms": statistics.fmean(len(r["exposed"]) for r in rs)}
        hits = [float(r["attacker_correct"]) for r in rs if "attacker_correct" in r]
        top3 = [float(r["attacker_top3"]) for r in rs if "attacker_top3" in r]
        if top3:
            entry.update(attacker_top3=statistics.fmean(top3), attacker_top3_ci=list(bootstrap_ci(top3)))
        if hits:
            entry.update(attacker_accuracy=statistics.fmean(hits), attacker_ci=list(bootstrap_ci(hits)),
                         attacker_chance=statistics.fmean(1 / r["candidates"] for r in rs if "candidates" in r),
                         attacker_posterior=statistics.fmean(r["attacker_posterior"] for r in rs if "attacker_posterior" in r),
                         attacker_guesses=dict(Counter(r["attacker_guess"] for r in rs if "attacker_guess" in r)))
        margins = [r["deny_margin"] for r in rs if r.get("deny_margin") is not None]
        if margins:
            entry["deny_margin_max"] = max(margins)
        if m != baseline and by.get(baseline):
            common = [i for i in by[m] if i in by[baseline]]
            if common:
                diffs = [by[m][i]["exposure"] - by[baseline][i]["exposure"] for i in common]
                entry["exposure_vs_llm"] = statistics.fmean(diffs)
                entry["exposure_vs_llm_ci"] = list(bootstrap_ci(diffs))
                paired = [i for i in common if "attacker_correct" in by[m][i] and "attacker_correct" in by[baseline][i]]
                if paired:
                    lift = [float(by[m][i]["attacker_correct"]) - float(by[baseline][i]["attacker_correct"]) for i in paired]
                    entry["marginal_leakage"], entry["marginal_leakage_ci"] = statistics.fmean(lift), list(bootstrap_ci(lift))
        out[m] = entry
    return out


def privacy_table(summary: dict, quality: dict) -> str:
    def iv(v, ci, pct=True):
        f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3f}")
        return f"{f(v)} [{f(ci[0])}, {f(ci[1])}]"

    lines = [f"{'method':28s} {'exposure':>22s} {'added by steering':>24s} {'attacker top-1':>24s} "
             f"{'top-3':>24s} {'marginal leakage':>24s} {'ROUGE-L':>22s}"]
    for m, e in summary.items():
        added = iv(e["exposure_vs_llm"], e["exposure_vs_llm_ci"]) if "exposure_vs_llm" in e else "–"
        attack = iv(e["attacker_accuracy"], e["attacker_ci"]) if "attacker_accuracy" in e else "–"
        top3 = iv(e["attacker_top3"], e["attacker_top3_ci"]) if "attacker_top3" in e else "–"
        leak = iv(e["marginal_leakage"], e["marginal_leakage_ci"]) if "marginal_leakage" in e else "–"
        q = quality.get(m, {})
        rouge = iv(q["rougeL"], q["rougeL_ci"], pct=False) if q else "–"
        lines.append(f"{m:28s} {iv(e['exposure'], e['exposure_ci']):>22s} {added:>24s} {attack:>24s} {top3:>24s} "
                     f"{leak:>24s} {rouge:>22s}")
    chance = next((e["attacker_chance"] for e in summary.values() if "attacker_chance" in e), None)
    lines.append("exposure: share of the user's distinctive terms (rare 1-3-grams of their history, not typed by "
                 "them) in what the cloud received; added by steering: paired difference to llm on the same rows.")
    if chance is not None:
        lines.append(f"attacker: how much each persona's profile raises the cloud's likelihood of the reply, against its "
                     f"own no-context answer; chance = {100 * chance:.1f}% (top-3: {min(100.0, 300 * chance):.1f}%); "
                     "marginal leakage: top-1 minus the same attacker's top-1 on the llm answers, paired.")
    for m, e in summary.items():
        if "deny_margin_max" in e:
            lines.append(f"{m}: max log p - log b on deny-listed tokens over all steps = {e['deny_margin_max']:.2e} "
                         "(<= 0: never likelier than the cloud alone)")
    lines.append("slm_ctx sends nothing to the cloud: no privacy figures.")
    return "\n".join(lines)


def plot_privacy(summary: dict, quality: dict, path: str):
    """The privacy-utility frontier, one point per method with its intervals: left, marginal
    leakage (attacker top-1 minus its top-1 on `llm`, points) against the ROUGE-L gain over `llm`,
    both paired by row; `slm_ctx` sends nothing, so it sits at 0 leakage. Right, exposure against
    ROUGE-L."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for m, q in quality.items():
        gain = q.get("vs_llm")
        e = summary.get(m, {})
        if gain is None or (m != "slm_ctx" and "marginal_leakage" not in e):
            continue
        y, yci = (0.0, (0.0, 0.0)) if m == "slm_ctx" else (100 * e["marginal_leakage"],
                                                           [100 * v for v in e["marginal_leakage_ci"]])
        x, xci = gain["rougeL_diff"], gain["rougeL_diff_ci"]
        left.errorbar(x, y, xerr=[[x - xci[0]], [xci[1] - x]], yerr=[[y - yci[0]], [yci[1] - y]], fmt="o", capsize=3)
        left.annotate(m.replace("costeer:", ""), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    left.axhline(5, ls="--", color="grey", lw=1)
    left.annotate("leakage goal: 5 points", (left.get_xlim()[0], 5), fontsize=8, color="grey")
    left.set_xlabel("ROUGE-L gain over llm (paired)")
    left.set_ylabel("marginal leakage (points)")
    for m in [m for m in summary if m in quality and "exposure" in summary[m]]:
        e, q = summary[m], quality[m]
        right.errorbar(q["rougeL"], e["exposure"], xerr=[[q["rougeL"] - q["rougeL_ci"][0]], [q["rougeL_ci"][1] - q["rougeL"]]],
                       yerr=[[e["exposure"] - e["exposure_ci"][0]], [e["exposure_ci"][1] - e["exposure"]]], fmt="o", capsize=3)
        right.annotate(m.replace("costeer:", ""), (q["rougeL"], e["exposure"]), textcoords="offset points",
                       xytext=(4, 4), fontsize=8)
    right.set_xlabel("ROUGE-L (utility)")
    right.set_ylabel("exposure (share of distinctive terms)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
