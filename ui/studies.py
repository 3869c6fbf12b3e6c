"""Handlers for rating studies: the owner's (create, watch, cancel, results, exports) and the
rater's (next pair, vote). They check their inputs (fields/__init__.py) and call the study store
(user_store/studies.py), the pre-generator and the analysis (studies/); they hold no algorithm.

A rater handler gets the study id and the link token with every call and checks them; its
answers never name the settings of a pair before the rater's vote on it.
"""
from __future__ import annotations

import os
import random
import secrets
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from studies import design
from studies.export import battles, to_csv, to_jsonl
from studies.leaderboard import ROUNDS, leaderboard
from studies.pregenerate import Pregenerator
from user_store import UserStore
from user_store.formats import card_line

import fields as F
from fields import Refused
from .guard import EXPECTED, refusal
from .render import esc, md_text

STUDY_PATH = "/study/"
INSTRUCTIONS = ("Each pair is two answers to a request written by the person on the card. Pick the answer that "
                "better fits **this person** (their interests, situation and way of writing) while still being a "
                "good answer. Choose *Tie* when they are equally good, *Both are bad* when neither is acceptable. "
                "The answers were made by different settings of the same system; which is which is not shown "
                "while you rate.")
CARD_KINDS = ("profile", "preference")
CARD_CHARS = 700
CARD_HEADER = "## "


def parse_cards_text(text: str) -> dict[str, str]:
    """The Studies tab's cards box: `## name` lines, each followed by that persona's card."""
    cards, name = {}, None
    for line in text.splitlines():
        if line.startswith(CARD_HEADER):
            name = line[len(CARD_HEADER):].strip()
            cards[name] = ""
        elif name is None:
            if line.strip():
                raise Refused("cards: start each card with a line `## name` naming its persona")
        else:
            cards[name] += line + "\n"
    return cards


def link_path(study_id: int, token: str) -> str:
    return f"{STUDY_PATH}?study={study_id}&rater={token}"


@dataclass
class StudyDesk:
    store: UserStore
    pregen: Pregenerator
    cloud_model: str | None = None
    local_model: str | None = None
    raters_url: str | None = None  # the raters' own server, as raters reach it (app.py --raters-host/--raters-url)
    rng: random.Random = field(default_factory=random.Random)
    _cache: dict = field(default_factory=dict)  # study -> (votes seen, exclude_flagged, leaderboard)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def studies(self):
        return self.store.studies

    # -- the owner's --------------------------------------------------------------------
    def card(self, persona: str) -> str:
        """What raters judge personalization against, by default: the persona's profile and
        preferences (pinned entries first), never an entry marked sensitive. Only the card is
        shown to raters, never the history; the organizer reads and may edit it (`cards`)."""
        lines = [card_line(e) for e in self.store.entries(persona)
                 if (e["pinned"] or e["kind"] in CARD_KINDS) and not e["sensitive"]]
        text = "\n".join(lines) or f"{persona} (no profile entries shared)"
        return text if len(text) <= CARD_CHARS else text[:CARD_CHARS - 1] + "…"

    def cards_text(self, personas) -> str:
        """The default cards of `personas` as one editable text: a `## name` line, then the card."""
        known = set(self.store.users())
        return "\n\n".join(f"{CARD_HEADER}{p}\n{self.card(p)}" for p in personas or [] if p in known)

    def check_cards(self, cards, personas: list[str]) -> dict[str, str]:
        """{persona: card} from the organizer (a dict, or the `## name` text), each persona not
        named getting its default card. A card holding an entry marked sensitive is refused."""
        if cards is None or (isinstance(cards, str) and not cards.strip()):
            cards = {}
        if isinstance(cards, str):
            cards = parse_cards_text(cards)
        if not isinstance(cards, dict):
            raise Refused("cards: give {persona: card text} (or the `## name` text of the Studies tab)")
        out = {}
        for name, card in cards.items():
            if name not in personas:
                raise Refused(f"cards: {str(name)[:40]!r} is not one of this study's personas ({', '.join(personas)})")
            try:
                card = F.CARD.check(card).strip()
            except Refused as exc:
                raise Refused(f"cards[{name}]: {exc}") from None
            for e in self.store.entries(name):
                if e["sensitive"] and (card_line(e) in card or e["text"].strip() in card):
                    raise Refused(f"cards[{name}]: it holds entry #{e['id']}, which is marked sensitive; remove it "
                                  "from the card or unmark the entry in History")
            out[name] = card or self.card(name)
        return {p: out.get(p) or self.card(p) for p in personas}

    def card_view(self, user) -> str:
        """The live A/B tab's persona card: what the vote judges personalization against."""
        if not isinstance(user, str) or user not in self.store.users():
            return ""
        return f"**Judging for {md_text(user)}:**  \n" + card_markdown(self.card(user))

    def create_study(self, name, personas, prompts, settings, all_pairs=False, raters=12, pairs_per_rater=0,
                     attention_every=6, max_new_tokens=128, repetition_penalty=1.1, no_repeat_ngram_size=4,
                     instructions="", cards=None, include_flagged=False, reveal="end", consent="",
                     completion_code="", overlap=0) -> dict:
        name = F.STUDY_NAME.check(name).strip()
        personas = F.text_list("personas", F.USER, personas, design.MAX_PERSONAS)
        known = set(self.store.users())
        for p in personas:
            if p not in known:
                raise Refused(f"personas: unknown user {p!r}; create it or load an example persona first")
        prompts = F.text_list("prompts", F.PROMPT, prompts, design.MAX_PROMPTS)
        if isinstance(settings, str):
            settings = design.parse_settings_text(settings)
        if not isinstance(settings, (list, tuple)) or not settings:
            raise Refused("settings: give one or more settings, e.g. [{\"T\": 20, \"eta\": 10, \"lam\": 2}]")
        if len(settings) > design.MAX_SETTINGS:
            raise Refused(f"settings: at most {design.MAX_SETTINGS} (plus the baseline), got {len(settings)}")
        decoding = design.check_decoding({"temperature": 0.0, "top_p": 1.0, "seed": None,
                                          "max_new_tokens": max_new_tokens, "repetition_penalty": repetition_penalty,
                                          "no_repeat_ngram_size": no_repeat_ngram_size})
        chosen = [design.baseline(decoding)] + [design.setting_from(s, decoding, f"settings[{i}]")
                                                for i, s in enumerate(settings)]
        if not F.INCLUDE_FLAGGED.check(include_flagged):
            design.refuse_flagged(chosen)
        labels = [s.label for s in chosen]
        if len(set(labels)) < len(labels):
            raise Refused(f"settings: two settings share a label ({', '.join(labels)}); give each its own label")
        all_pairs = F.ALL_PAIRS.check(all_pairs)
        raters = F.RATERS.check(raters)
        pairs_per_rater, overlap = F.PAIRS_PER_RATER.check(pairs_per_rater), F.OVERLAP.check(overlap)
        attention_every = F.ATTENTION_EVERY.check(attention_every)
        instructions = F.INSTRUCTIONS.check(instructions).strip() or INSTRUCTIONS
        reveal = F.REVEAL.check(reveal)
        consent = F.CONSENT.check(consent).strip() or None
        code = F.COMPLETION_CODE.check(completion_code).strip() or secrets.token_hex(4).upper()
        cards = self.check_cards(cards, personas)
        items = [{"persona": p, "prompt": q, "card": cards[p]} for p in personas for q in prompts]
        pairs = design.pairs_of(chosen, all_pairs)
        sid = self.studies.create(
            name, instructions, items, [{"label": s.label, "baseline": s.baseline, "config": s.config} for s in chosen],
            pairs, all_pairs=all_pairs, pairs_per_rater=pairs_per_rater, attention_every=attention_every,
            cloud_model=self.cloud_model, local_model=self.local_model, reveal=reveal, consent=consent,
            completion_code=code, overlap=overlap)
        links = self.add_raters(sid, raters)["links"] if raters else []
        self.pregen.submit(sid)
        return {"study": sid, "answers_total": len(items) * len(chosen), "pairs": len(items) * len(pairs),
                "settings": labels, "links": links, "completion_code": code}

    def add_raters(self, study, raters) -> dict:
        """`raters` new links, named "rater 1", "rater 2", … after those the study has."""
        count = F.RATERS.check(raters)
        study = self._study(study)
        start = len(self.studies.raters(study)) + 1
        made = self.studies.add_raters(study, [f"rater {start + i}" for i in range(count)])
        return {"study": study, "links": [{"name": r["name"], "link": link_path(study, r["token"])} for r in made]}

    def raters(self, study) -> list[dict]:
        """The organizer's desk: each rater's link (again, after a reload), progress, attention
        checks passed, median seconds per vote, last seen, revoked."""
        study = self._study(study)
        target = self.studies.target(self.studies.study(study))
        checks = self.leaderboard(study)["attention"]["raters"]
        return [{"name": r["name"], "link": link_path(study, r["token"]) if r["token"] else None,
                 "votes": r["votes"], "target": target, "checks": r["checks"],
                 "checks_passed": checks.get(r["name"], {}).get("passed", 0),
                 "median_s_per_vote": r["median_s_per_vote"], "last_seen": r["last_seen"], "revoked": r["revoked"]}
                for r in self.studies.desk(study)]

    def revoke_rater(self, study, rater) -> dict:
        """Revoke one rater's link (by name): refused from now on; their votes stay."""
        return self.studies.revoke(self._study(study), F.RATER_NAME.check(rater).strip())

    def study_status(self, study) -> dict:
        study = self._study(study)
        out = self.studies.progress(study)
        out.update({"pairs": self.studies.count_pairs(study),
                    "raters": len(self.studies.raters(study)),
                    "settings": [s["label"] for s in self.studies.settings(study)]})
        return out

    def cancel_study(self, study) -> dict:
        study = self._study(study)
        if self.studies.study(study)["status"] != "generating":
            raise Refused(f"study: #{study} is not generating (status {self.studies.study(study)['status']})")
        self.pregen.cancel(study)
        return self.study_status(study)

    def leaderboard(self, study, exclude_flagged=False) -> dict:
        """Results, recomputed when a vote has arrived since the last time (1000 bootstrap rounds)."""
        exclude_flagged = F.EXCLUDE_FLAGGED.check(exclude_flagged)
        study = self._study(study)
        votes = self.studies.votes(study)
        key = (len(votes), votes[-1]["vote"] if votes else 0, exclude_flagged)
        with self._lock:
            cached = self._cache.get(study)
        if cached and cached[0] == key:
            return cached[1]
        settings = self.studies.settings(study)
        names = [s["label"] for s in settings]
        result = leaderboard(battles(votes), names, design.BASELINE, rounds=ROUNDS, exclude_flagged=exclude_flagged)
        result["study"] = study
        result["strength"] = {s["label"]: design.Setting.from_row(s).strength for s in settings}
        with self._lock:
            self._cache[study] = (key, result)
        return result

    def export(self, study, kind: str) -> str:
        """The study's votes as a file: FastChat battles (.jsonl) or a spreadsheet-safe .csv."""
        study = self._study(study)
        rows = battles(self.studies.votes(study))
        out = Path(tempfile.mkdtemp(prefix="costeer-study-", dir=os.environ.get("GRADIO_TEMP_DIR")))
        path = out / (f"study-{study}-battles.jsonl" if kind == "jsonl" else f"study-{study}-votes.csv")
        path.write_text(to_jsonl(rows) if kind == "jsonl" else to_csv(rows), encoding="utf-8")
        return str(path)

    def _study(self, study) -> int:
        study = F.STUDY.check(study)
        self.studies.study(study)  # UnknownStudy names it
        return study

    # -- the rater's ----------------------------------------------------------------------
    def rater(self, study, token) -> dict:
        return self.studies.rater(F.STUDY.check(study), F.RATER_TOKEN.check(token).strip())

    def introduction(self, study, token) -> dict:
        rater = self.rater(study, token)
        s = self.studies.study(rater["study_id"])  # its name stays the organizer's: raters are blind
        return {"study": s["id"], "instructions": s["instructions"], "rater": rater["name"]}

    def next_pair(self, study, token) -> dict:
        """The rater's next pair: {"pair", "persona", "card", "prompt", "A", "B", "rated", "target"};
        or {"done": true} / {"waiting": true}. Asking again before voting gives the same pair."""
        rater = self.rater(study, token)
        s = self.studies.study(rater["study_id"])
        if s["consent"] and not rater["consented_at"]:
            return {"consent": s["consent"]}  # nothing of the study before the rater agrees
        out = self.studies.next_pair(rater, self.rng)
        if "issue" in out:
            out["pair"] = out.pop("issue")
        if out.get("done"):
            out["closed"] = s["status"] in ("cancelled", "failed")
            if not out["closed"] or out.get("rated"):
                out["completion_code"] = s["completion_code"]
            if s["reveal"] == "end":
                out["reveal"] = self.studies.reveal(rater)
        return out

    def consent(self, study, token, prolific_pid="", study_id="", session_id="") -> dict:
        """The rater agrees to the consent text; a panel's ids (Prolific's URL parameters) are kept."""
        study, token = F.STUDY.check(study), F.RATER_TOKEN.check(token)
        ids = {"prolific_pid": prolific_pid, "study_id": study_id, "session_id": session_id}
        external = {k.upper(): F.Text(k, 200, required=False).check(v).strip() for k, v in ids.items()}
        return self.studies.consent(self.rater(study, token), {k: v for k, v in external.items() if v} or None)

    def skip(self, study, token, pair) -> dict:
        """Pass on a pair issued to this link: not a vote; the next pair takes its place."""
        study, token, pair = F.STUDY.check(study), F.RATER_TOKEN.check(token), F.PAIR.check(pair)
        return self.studies.skip(self.rater(study, token), pair)

    def vote(self, study, token, pair, vote, comment="") -> dict:
        """One vote for a pair issued to this link, once. Which setting made which answer is not
        returned: raters stay blind until their last vote (next_pair's "reveal")."""
        study, token = F.STUDY.check(study), F.RATER_TOKEN.check(token)
        pair, vote = F.PAIR.check(pair), F.VOTE.check(vote)  # every field checked before the link is looked up
        comment = F.COMMENT.check(comment).strip()
        return {"vote": self.studies.vote(self.rater(study, token), pair, vote, comment)["vote"], "saved": vote}


PANEL_IDS = ("PROLIFIC_PID", "STUDY_ID", "SESSION_ID")  # a recruiting panel's URL parameters (Prolific's names)
VOTE_LABELS = (("A", "👈 A is better"), ("B", "👉 B is better"), ("tie", "🤝 Tie"), ("both_bad", "👎 Both are bad"))


def answer_markdown(text: str) -> str:
    """A model's answer as the rater sees it: lists and emphasis render, HTML shows as text."""
    return esc(text) if text.strip() else "*(empty answer)*"


@dataclass
class RaterPage:
    """The study page's handlers. The link (study id and token) comes from the page's URL once,
    is kept server-side in the session's State and is checked again at every call."""

    desk: StudyDesk

    def open(self, request: gr.Request):
        params = dict(getattr(request, "query_params", None) or {})
        study, token = params.get("study", ""), params.get("rater", "")
        try:
            intro = self.desk.introduction(int(study) if str(study).isdigit() else study or None, token or None)
        except EXPECTED as exc:
            refusal("open study link", exc)
            return (f"### This study link does not work\n{md_text(str(exc))}\n\n"
                    "Check that you opened the whole link you were given."), "", None
        head = f"### Rating study\nRating as **{md_text(intro['rater'])}**"
        how = md_text(intro["instructions"]) if intro["instructions"] != INSTRUCTIONS else INSTRUCTIONS
        panel = {k: str(params.get(k, ""))[:200] for k in PANEL_IDS}  # Prolific's URL parameters, kept on consent
        return head, how, {"study": intro["study"], "token": token, "panel": panel}

    def next(self, link):
        """Outputs (SHOWN): progress, card, prompt, A, B, reveal, the vote buttons, next, skip, pair,
        the pair's box, the consent box, its text, the comment box."""
        locked = [gr.update(interactive=False)] * len(VOTE_LABELS)
        hidden, blank = gr.update(visible=False), ""
        if not link:
            return (blank, blank, blank, blank, blank, blank, *locked, hidden, hidden, None, hidden, hidden, blank, blank)
        out = self.desk.next_pair(link["study"], link["token"])
        if "consent" in out:
            return (blank, blank, blank, blank, blank, blank, *locked, hidden, hidden, None, hidden,
                    gr.update(visible=True), md_text(out["consent"]), blank)
        if out.get("done") or out.get("waiting"):
            return (progress_line(out), blank, blank, blank, blank, end_note(out), *locked,
                    gr.update(visible=bool(out.get("waiting"))), hidden, None, hidden, hidden, blank, blank)
        return (progress_line(out), card_markdown(out["card"]), f"**Request:** {md_text(out['prompt'])}",
                answer_markdown(out["A"]), answer_markdown(out["B"]), blank,
                *[gr.update(interactive=True)] * len(VOTE_LABELS), hidden, gr.update(visible=True), out["pair"],
                gr.update(visible=True), hidden, blank, blank)

    def agree(self, link):
        """The rater agrees to the consent text; then their first pair (outputs as `next`)."""
        if not link:
            raise Refused("consent: this page has no valid study link")
        panel = link.get("panel") or {}
        self.desk.consent(link["study"], link["token"], *(panel.get(k, "") for k in PANEL_IDS))
        return self.next(link)

    def skip(self, link, pair):
        """Pass on the pair on screen; the next one takes its place (outputs as `next`)."""
        if not link or pair is None:
            raise Refused("skip: there is no pair on screen to skip")
        self.desk.skip(link["study"], link["token"], pair)
        return self.next(link)

    def vote(self, link, pair, vote, comment=""):
        """Outputs: reveal, the four vote buttons (locked again), next, skip (hidden), pair (spent),
        the instructions (folded: the rater has read them)."""
        if not link or pair is None:
            raise Refused("vote: there is no pair on screen to vote on; press Next pair")
        self.desk.vote(link["study"], link["token"], pair, vote, comment or "")
        said = dict(VOTE_LABELS)[vote].split(" ", 1)[1]
        return (f"Saved: *{said}*{' with your comment' if (comment or '').strip() else ''}. "
                "Press *Next pair* to go on.", *[gr.update(interactive=False)] * len(VOTE_LABELS),
                gr.update(visible=True), gr.update(visible=False), None, gr.update(open=False))


def card_markdown(card: str) -> str:
    return "  \n".join(md_text(line) for line in card.splitlines())


def progress_line(out: dict) -> str:
    """Every pair shown counts, attention checks included, so the count never stalls."""
    if out.get("done") or "total" not in out:
        return f"{out.get('rated', 0)} of {out.get('target', 0)} rated"
    return f"Pair {min(out['answered'] + 1, out['total'])} of {out['total']}"


def end_note(out: dict) -> str:
    """What a rater reads when there is no pair to show: waiting, closed, or done (with the reveal)."""
    if out.get("waiting"):
        return "**The next answers are still being generated.** Press *Next pair* again in a minute."
    if out.get("closed") and not out.get("rated"):
        return "**This study was closed by its organizer** before any pair was ready for you: nothing to rate."
    done = "**All done: thank you!** You have finished this study."
    if out.get("completion_code"):
        done += f"\n\nYour completion code: **{md_text(out['completion_code'])}**"
    if not out.get("reveal"):
        return done
    said = {v: label.split(" ", 1)[1] for v, label in VOTE_LABELS}
    rows = "\n".join(f"| {md_text(r['prompt'])} | {md_text(r['A'])} | {md_text(r['B'])} | {said[r['vote']]} |"
                     for r in out["reveal"])
    return f"{done}\n\nWhich setting made which answer:\n\n| request | A | B | your vote |\n|---|---|---|---|\n{rows}"


DESK_HEADERS = ["rater", "link", "rated", "attention checks passed", "median time per vote", "last seen (UTC)",
                "link status"]
LEADERBOARD_HEADERS = ["rank", "setting", "C", "score (BT)", "95% CI", "style-controlled", "95% CI ", "battles"]


def _score(x) -> str:
    return "–" if x is None else f"{x:.0f}"


def _ci(s: dict) -> str:
    return "–" if s["low"] is None else f"[{s['low']:.0f}, {s['high']:.0f}]"


def _share(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def progress_html(p: dict) -> str:
    total = max(1, p["answers_total"])
    pct = 100 * p["answers_done"] / total
    problem = f" · {esc(p['problem'])}" if p.get("problem") else ""
    return (f"<div class='study-progress'><div class='bar'><div style='width:{pct:.0f}%'></div></div>"
            f"<span>{esc(p['name'])}: <b>{esc(p['status'])}</b> · answers {p['answers_done']} / {p['answers_total']}"
            f" · pairs {p['pairs']} · raters {p['raters']} · votes {p['votes']}{problem}</span></div>")


@dataclass
class StudiesTab:
    """The owner's Studies tab: forms in, tables and a plot out."""

    desk: StudyDesk

    def choices(self, selected=None):
        options = [(f"#{s['id']} {s['name']} ({s['status']})", s["id"]) for s in self.desk.studies.studies()]
        if selected is None and options:
            selected = options[0][1]
        return gr.update(choices=options, value=selected)

    def create(self, name, personas, prompts, settings, all_pairs, raters, pairs_per_rater, attention_every,
               max_new_tokens, cards="", include_flagged=False, reveal="end", instructions="", consent="",
               completion_code="", overlap=0, request: gr.Request = None):
        out = self.desk.create_study(name, personas or [], prompts, settings, all_pairs, raters, pairs_per_rater,
                                     attention_every, max_new_tokens, cards=cards, include_flagged=include_flagged,
                                     reveal=reveal, instructions=instructions or "", consent=consent or "",
                                     completion_code=completion_code or "", overlap=overlap)
        code = f"Completion code raters see at the end: **{md_text(out['completion_code'])}**. "
        return code + self.links_markdown(out["study"], out["links"], request), self.choices(out["study"])

    def add_links(self, study, count, request: gr.Request = None):
        out = self.desk.add_raters(study, count)
        return self.links_markdown(out["study"], out["links"], request)

    def base(self, request) -> str:
        """Where raters open their links: the raters' own server (--raters-host, or --raters-url for a
        proxy or tunnel) when there is one, else this page's own address."""
        if self.desk.raters_url:
            return self.desk.raters_url
        return "http://" + (getattr(request, "headers", None) or {}).get("host", "127.0.0.1:7860")

    def reach(self, request) -> str:
        """One line on who can open the links, for the current binding."""
        if self.desk.raters_url:
            return f"Raters open their links on **{self.desk.raters_url}**, a server with the raters' page only."
        return ("These links work on this machine only (the app listens on loopback). For colleagues on your "
                "network, restart with `--raters-host 0.0.0.0` (the raters' page alone, on its own port); "
                "see docs/studies.md.")

    def links_markdown(self, study: int, links: list[dict], request) -> str:
        base = self.base(request)
        rows = "\n".join(f"| {md_text(r['name'])} | `{base}{r['link']}` |" for r in links)
        return (f"**Study #{study}: rater links.** Send each rater their own link; the *Raters* table below "
                f"lists them again after a reload, with each rater's progress. Make more with *Add rater links*. "
                f"{self.reach(request)}\n\n| rater | link |\n|---|---|\n{rows}"
                if links else f"Study #{study} created without rater links; add some below.")

    def cancel(self, study):
        return progress_html(self.desk.cancel_study(study))

    def view(self, study, exclude_flagged=False, request: gr.Request = None):
        """Progress, summary, leaderboard, win matrix, per persona, plot."""
        if study is None:
            return ("", "Create a study, or choose one.", [], None, [], None, [])
        p = self.desk.study_status(study)
        lb = self.desk.leaderboard(study, exclude_flagged)
        names = [n for n in p["settings"]]
        plain, styled = lb["plain"]["scores"], lb["style_controlled"]["scores"]
        order = sorted(names, key=lambda n: -(plain[n]["score"] if plain[n]["score"] is not None else -1e9))
        C = lb["strength"]
        rows = [[rank, n, "–" if C[n] is None else f"{C[n]:.3g}", _score(plain[n]["score"]), _ci(plain[n]),
                 _score(styled[n]["score"]), _ci(styled[n]), plain[n]["battles"]] for rank, n in enumerate(order, 1)]
        matrix = [[a] + ["–" if lb["win_matrix"][a][b] is None else _share(lb["win_matrix"][a][b]) for b in order]
                  for a in order]
        persona_rows = [[persona, n, _score(r["scores"][n]["score"]), _ci(r["scores"][n]), r["scores"][n]["battles"]]
                        for persona, r in lb["by_persona"].items() for n in order if r["scores"][n]["battles"]]
        return (progress_html(p), summary_markdown(lb), rows,
                {"headers": ["row beats column →"] + order, "data": matrix}, persona_rows, leaderboard_plot(lb, order),
                self.desk_rows(study, request))

    def desk_rows(self, study, request: gr.Request = None) -> list[list]:
        """The raters' table: one row per rater, with the full link to copy again."""
        base = self.base(request)
        return [[r["name"], f"{base}{r['link']}" if r["link"] else "(made before links were kept)",
                 f"{r['votes']} of {r['target']}", f"{r['checks_passed']} of {r['checks']}",
                 "–" if r["median_s_per_vote"] is None else f"{r['median_s_per_vote']:g} s",
                 (r["last_seen"] or "never")[:19].replace("T", " "), "revoked" if r["revoked"] else "active"]
                for r in self.desk.raters(study)]

    def revoke(self, study, name, request: gr.Request = None):
        if study is None:
            raise Refused("study: choose a study first")
        self.desk.revoke_rater(study, name)
        return self.desk_rows(study, request), ""

    def tick(self, study, exclude_flagged, seen, request: gr.Request = None):
        """The timer: progress always; the results only when a vote has arrived since `seen`."""
        if study is None:
            return (gr.skip(),) * 8
        p = self.desk.study_status(study)
        key = (study, p["votes"], exclude_flagged)
        if key == seen:
            return (progress_html(p), *(gr.skip(),) * 6, seen)
        return (*self.view(study, exclude_flagged, request), key)

    def export(self, study, kind):
        if study is None:
            raise Refused("study: choose a study first")
        return self.desk.export(study, kind)


def summary_markdown(lb: dict) -> str:
    pb, ag, at = lb["position_bias"], lb["agreement"], lb["attention"]
    alpha = f"{ag['alpha']:.2f}" if ag["alpha"] is not None else f"– ({ag.get('why', '')})"
    flagged = ", ".join(md_text(j) for j in at["flagged"]) or "none"
    style = lb["style_controlled"]["style"]
    style_text = (f"length {style['length']:+.2f}, list markup {style['lists']:+.2f} (log-odds per s.d.)"
                  if style else "–")
    pb_ci = f" [{_share(pb['low'])}, {_share(pb['high'])}]" if pb["low"] is not None else ""
    return (f"**{lb['votes']} votes** from **{lb['raters']} raters** (attention repeats not counted). "
            f"Bradley–Terry scores on the Elo scale, unsteered = 1000, 95% intervals from {lb['rounds']} "
            f"bootstrap rounds; a tie or both-bad counts half a win each way.\n\n"
            f"- **Position bias:** side A won {_share(pb['a_share'])}{pb_ci} of {pb['decided']} decided votes "
            f"(50% = none)\n"
            f"- **Agreement:** Krippendorff's α (ordinal) = {alpha} over {ag['pairs']} pairs rated by ≥ 2 raters\n"
            f"- **Attention checks:** {at['passed']} of {at['checks']} passed ({_share(at['rate'])}); "
            f"flagged raters (< 75% passed): {flagged}"
            f"{' — excluded from the scores' if lb['excluded_flagged'] else ''}\n"
            f"- **Style control:** coefficients {style_text}")


def leaderboard_plot(lb: dict, order: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.55 * len(order)))
    for offset, (key, colour, name) in enumerate((("plain", "#4f7cac", "Bradley–Terry"),
                                                  ("style_controlled", "#d08c35", "style-controlled"))):
        s = lb[key]["scores"]
        ys = [i + 0.18 * (1 - 2 * offset) for i in range(len(order))]
        xs = [s[n]["score"] if s[n]["score"] is not None else float("nan") for n in order]
        err = [[max(0, x - (s[n]["low"] if s[n]["low"] is not None else x)) for x, n in zip(xs, order)],
               [max(0, (s[n]["high"] if s[n]["high"] is not None else x) - x) for x, n in zip(xs, order)]]
        ax.errorbar(xs, ys, xerr=err, fmt="o", color=colour, capsize=3, label=name)
    ax.set_yticks(range(len(order)), order)
    ax.invert_yaxis()
    ax.axvline(1000, color="#999", linestyle="--", linewidth=1)
    ax.set_xlabel("score (unsteered = 1000), 95% bootstrap interval")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig
