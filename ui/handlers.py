"""Handlers behind the app's components: check the inputs (fields/__init__.py), call the engine and the
store, format (ui/render.py). They hold no algorithm: steering lives in `costeer`, storage and
retrieval in `user_store`. Refusals are raised as `Refused`; ui/guard.py shows them.

Per browser session the studio keeps one `Session`: which reply is running. Switching user, a
new conversation, the side-by-side toggle and Stop all end the running reply, and leave the
screen it must end on. The reply checks at every token; once ended it stops the engine, sends
that screen as its own last update and returns. Why not Gradio's `cancels=`: a cancelled event's
update already on its way can land after the canceller's (it did, in 2 of 3 browser runs); the
reply's own last update cannot be overtaken by its earlier ones.
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from costeer.bench.machine import cpu_name
from costeer.bench.projection import measured_from, projections
from costeer.engine.decoding import CloudTranscript, ConfidenceGate, CoSteerEngine, Defences, Sampling
from costeer.evaluation.audit import attacker_model
from costeer.evaluation.content import COPY_RUN, contradictions, copied_run
from costeer.steering.defences import sent_deny_ids
from costeer.evaluation.privacy import PersonaAttacker, audit_reply, cloud_view, deny_list
from costeer.engine.spec import DecodeSpec
from costeer.engine.summary import ReplySummary, StreamSummary
from costeer.evaluation.plots import score_and_strength
from costeer.steering.policy import SteeringParams, effective_strength
from costeer.steering.private import PRIVATE_MARGIN
from costeer.evaluation.stats import overlap_score, repeated_ngram_share, summarize_votes
from studies.export import spreadsheet_safe
from user_store import KINDS, VOTES, NoUserName, StoreError, UserStore, read_import

import fields as F
from fields import Refused
from .guard import EXPECTED, info, refusal, warn
from .render import (TOKENS_EMPTY, md_text, TOKENS_OPEN, SplitView, bubble, latency_html, privacy_html, settings_line, shaped_by,
                     status_html, strength_markdown, token_span, tokens_html)

CONTEXT_TOKENS = 256
PERSONAS = Path(__file__).resolve().parents[1] / "assets" / "personas"
UPDATE_EVERY_S = 0.25  # at most 4 screen updates per second while a reply streams; the last is never delayed
GENERIC_EXAMPLES = ["Suggest a plan for my Friday evening.", "What should I cook tonight?",
                    "Write a short note to a friend about my week."]
# The app's defaults for the bundled model, chosen by a measured sweep (docs/evaluation.md, "Demo
# defaults"): greedy with light repetition control (the 135M model loops without it) and the copy
# guard (it copies its context without it). PAPER is the paper's setting, one click away in the UI.
DEMO = {"T": 20, "eta": 10.0, "lam": 2.0, "repetition_penalty": 1.1, "no_repeat_ngram_size": 4, "copy_guard": 6}
PAPER = {"T": 20, "eta": 10.0, "lam": 2.0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "copy_guard": 0}
DEMO_DECODING = {k: DEMO[k] for k in ("repetition_penalty", "no_repeat_ngram_size")}
PAPER_DECODING = {k: PAPER[k] for k in ("repetition_penalty", "no_repeat_ngram_size")}
DEMO_COPY_GUARD = DEMO["copy_guard"]
# The explorer's fluency check, measured on the three personas' example prompts: the cloud's own
# greedy answers average -0.7 to -1.1 nats per token under the cloud, steered answers at C = 1.8
# -1.2 to -4.8, word salad (C = 19 and C = 969) -9 to -20.
FLUENCY_MARGIN = 5.0  # nats per token below the cloud's own answer: flagged as not fluent
MAX_REPEATED = 0.2  # share of repeated token 4-grams above which an answer is flagged as looping


MAX_CANDIDATES = 12  # the privacy panel's attacker scores at most this many users' profiles

MESSAGE_HINT = "Ask something…"
MESSAGE_BUSY = "A reply is running: wait for it, or press Stop to end it"


def message_box(value: str = "", busy: bool = False):
    """The message box; while a reply runs its placeholder says why Enter does nothing."""
    return gr.update(value=value, placeholder=MESSAGE_BUSY if busy else MESSAGE_HINT)


def new_conversation() -> dict:
    """What each pane's conversation holds: the messages the models see, and what is shown."""
    return {"steered": [], "unsteered": [], "steered_view": [], "unsteered_view": [],
            "public": []}  # the steered conversation as the cloud received it (differs in Private mode)


def public_messages(conv: dict) -> list[dict]:
    """The steered conversation as the cloud received it: in Private mode its replies are the
    public text, elsewhere the answers themselves (a conversation from before Private existed
    has no "public" list: its answers were all sent as they are)."""
    return conv.get("public", conv["steered"])


def checked_speculate(speculate, private: bool) -> int:
    speculate = int(F.SPECULATE.check(speculate))
    if private and speculate > 1:
        raise Refused(f"speculate K: Private mode needs 1 (off), got {speculate}: the cloud scores a draft "
                      "before the device could keep any of it back")
    return speculate


def persona_files() -> dict[str, Path]:
    """Example personas shipped in assets/, by display name."""
    out = {}
    for path in sorted(PERSONAS.glob("*.json")):
        out[json.loads(path.read_text(encoding="utf-8"))["user"]] = path
    return out


DEMO_PERSONA = "Kenji (Osaka, vegetarian, jazz)"  # the persona the docs' walk-through uses


def persona_examples(user: str | None) -> list[str]:
    path = persona_files().get(user)
    if path is None:
        return GENERIC_EXAMPLES
    return json.loads(path.read_text(encoding="utf-8")).get("examples") or GENERIC_EXAMPLES


def persona_excludes(user: str | None) -> list[str]:
    """What a shipped persona excludes ("meat" for a strict vegetarian): an answer naming one
    contradicts their history. Users made in the app have no such list."""
    path = persona_files().get(user)
    return json.loads(path.read_text(encoding="utf-8")).get("excludes", []) if path else []


def make_params(T, eta, lam, alpha=2.0, beta=1.0) -> SteeringParams:
    return SteeringParams(T=F.T.check(T), eta=F.ETA.check(eta), lam=F.LAM.check(lam),
                          alpha=F.ALPHA.check(alpha), beta=F.BETA.check(beta))


def make_sampling(temperature=0.0, top_p=1.0, seed=None, max_new_tokens=128, repetition_penalty=1.0,
                  no_repeat_ngram_size=0) -> Sampling:
    return Sampling(max_new_tokens=F.MAX_NEW_TOKENS.check(max_new_tokens), temperature=F.TEMPERATURE.check(temperature),
                    top_p=F.TOP_P.check(top_p), seed=F.SEED.check(seed),
                    repetition_penalty=F.REPETITION_PENALTY.check(repetition_penalty),
                    no_repeat_ngram_size=F.NO_REPEAT_NGRAM.check(no_repeat_ngram_size))


def make_gate(on, threshold, patience, mode="paper") -> ConfidenceGate | None:
    on, threshold = F.GATE_ON.check(on), F.GATE_THRESHOLD.check(threshold)
    patience, mode = F.GATE_PATIENCE.check(patience), F.GATE_MODE.check(mode)
    return ConfidenceGate(threshold, patience, mode) if on else None


@dataclass
class Session:
    """One browser session's running reply (`running` is its number, None when idle)."""

    epoch: int = 0
    running: int | None = None
    endings: dict[int, tuple] = field(default_factory=dict)  # the screen an ended reply shows last
    message: str = ""  # the running reply's question: Stop puts it back in the box

    def start(self) -> int:
        if self.running is not None:
            raise Refused("send: a reply is still running; wait for it or press Stop")
        self.epoch += 1
        self.running = self.epoch
        return self.epoch

    def current(self, run: int) -> bool:
        return self.running == run == self.epoch

    def end(self, screen: tuple | None = None, run: int | None = None):
        """End the running reply (any, or only `run`); `screen` is what it must leave shown."""
        if run is not None and self.running != run:
            return
        if self.running is not None and screen is not None:
            self.endings[self.running] = screen
        self.running = None
        self.epoch += 1

    def ending(self, run: int) -> tuple | None:
        return self.endings.pop(run, None)

    def box_after_end(self):
        """The message box once Stop or a reset ends things: a running reply's question goes back
        into it; with nothing running, whatever is typed there stays."""
        return message_box(self.message) if self.running is not None else gr.update(placeholder=MESSAGE_HINT)


@dataclass
class TurnScreen:
    """What a turn shows while it runs: each side's text and state, after the conversation it
    continues (only the sides being generated; the other is left as it is)."""
    conv: dict
    message: str
    settings: dict  # stream -> the settings line its answer ends with
    summary: ReplySummary = field(default_factory=ReplySummary)  # the answers so far, and their latency
    states: dict = field(init=False)

    def __post_init__(self):
        self.states = {s: "generating…" for s in self.settings}

    def views(self, final: bool = False) -> dict:
        out = {}
        for s in ("unsteered", "steered"):
            if s not in self.settings:
                out[s] = gr.skip()
                continue
            text = self.summary[s].shown if final else self.summary[s].text
            answer = {"role": "assistant", "content": bubble(text, self.settings[s] if final else "")}
            out[s] = self.conv[f"{s}_view"] + [{"role": "user", "content": bubble(self.message)}, answer]
        return out


def recorded(stream, into: list):
    for ev in stream:
        into.append(ev)
        yield ev


def kept_back(events) -> list[dict]:
    """Private mode's kept-back positions of the steered answer: the token the user read there
    and the stand-in the cloud received instead (ids)."""
    return [{"position": ev.step, "read": ev.token_id, "sent": ev.sent_id}
            for ev in events if ev.stream == "steered" and ev.sent_id is not None]


def deny_check(defences, transcript, steered: StreamSummary, tokenizer) -> dict | None:
    """The deny-list's check over what the cloud received for the steered answer (chosen tokens
    and drafts): how many listed ids were sent, which words, and the largest log p − log b."""
    if defences is None or not defences.deny_ids:
        return None
    listed = set(defences.deny_ids)
    words = list(dict.fromkeys(tokenizer.decode([t]).strip() for t in transcript.token_ids["steered"] if t in listed))
    margin = steered.deny_margin if steered.deny_margin is not None else 0.0
    return {"ids": len(defences.deny_ids), "margin": margin,
            "sent": sent_deny_ids(transcript, "steered", defences.deny_ids), "words": words}


@dataclass
class Studio:
    """Everything a handler needs, passed explicitly (no module globals)."""

    engine: CoSteerEngine
    store: UserStore
    context_tokens: int = CONTEXT_TOKENS
    rng: random.Random = field(default_factory=random.Random)
    sessions: dict[str, Session] = field(default_factory=dict)
    read_only: str | None = None  # why the database cannot be written, found at start-up
    _attacker: PersonaAttacker | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def session(self, request: gr.Request | None) -> Session:
        key = getattr(request, "session_hash", None) or "local"
        with self._lock:
            return self.sessions.setdefault(key, Session())

    def forget(self, request: gr.Request):
        """The page closed: drop its session."""
        with self._lock:
            self.sessions.pop(getattr(request, "session_hash", None) or "local", None)

    # -- context and strength -------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.engine.device.tokenizer(text, add_special_tokens=False)["input_ids"])

    def context_for(self, user: str, message: str) -> str:
        return self.store.build_context(user, message, max_tokens=self.context_tokens, count_tokens=self.count_tokens)

    def defences_for(self, user: str, sigma: float = 0.0, tau: float = 0.0, copy_guard: int = DEMO_COPY_GUARD,
                     private: bool = False) -> Defences | None:
        """The user's deny-list (entries marked sensitive), the clip (tau 0 = off), the noise, the
        copy guard and Private mode; None when none is on. The noise is seeded by the answer's
        sampling seed."""
        deny = deny_list(self.store.entries(user), self.engine.cloud.tokenizer)
        defences = Defences(deny_ids=deny, tau=tau or None, sigma=sigma, copy_guard=int(copy_guard),
                            private=PRIVATE_MARGIN if private else None)
        return defences if defences.active else None

    def check_user(self, user) -> str:
        user = F.USER.check(user)
        if user not in self.store.users():
            raise Refused(f"user: unknown user {user!r}; choose one from the list, or create it")
        return user

    @staticmethod
    def strength(T, eta, lam, alpha, beta) -> str:
        """The C badge. A slider typed past its range is set back to the range's end by the browser;
        say so, rather than let the value change silently."""
        for spec, value in ((F.T, T), (F.ETA, eta), (F.LAM, lam)):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and \
                    not spec.lo <= value <= spec.hi:
                edge = spec.hi if value > spec.hi else spec.lo
                warn(f"{spec.name}: must be {spec.allowed}, got {value:g}; the slider is set to {edge:g}")
        try:
            return strength_markdown(effective_strength(make_params(T, eta, lam, alpha, beta)))
        except (Refused, ValueError) as exc:
            return strength_markdown(None, str(exc))

    def remote(self) -> bool:
        return self.engine.cloud.where != "in this process"

    # -- chat ---------------------------------------------------------------------------
    def chat(self, user, message, side_by_side, T, eta, lam, alpha, beta, temperature, top_p, seed,
             max_new_tokens, repetition_penalty, no_repeat_ngram_size, gate_on, gate_threshold, gate_patience,
             gate_mode, sigma, tau, speculate, conv, copy_guard=DEMO_COPY_GUARD, private=False,
             request: gr.Request = None):
        """Stream one turn. Yields (unsteered chat, steered chat, token view, privacy, latency, status,
        conv, message box, Send, Stop). `speculate` K > 1: up to K tokens per cloud round trip;
        `private`: Private mode, the cloud gets stand-ins for the tokens kept back."""
        user = self.check_user(user)
        message = F.MESSAGE.check(message).strip()
        side = F.SIDE_BY_SIDE.check(side_by_side)
        params = make_params(T, eta, lam, alpha, beta)
        sampling = make_sampling(temperature, top_p, seed, max_new_tokens, repetition_penalty, no_repeat_ngram_size)
        gate = make_gate(gate_on, gate_threshold, gate_patience, gate_mode)
        private = F.PRIVATE.check(private)
        speculate = checked_speculate(speculate, private)
        defences = self.defences_for(user, F.SIGMA.check(sigma), F.TAU.check(tau), F.COPY_GUARD.check(copy_guard),
                                     private)
        conv = conv or new_conversation()
        session = self.session(request)
        run = session.start()
        session.message = message
        try:
            yield from self._turn(session, run, user, message, side, params, sampling, gate, defences, speculate, conv)
        finally:
            session.end(run=run)
            session.endings.pop(run, None)

    def _turn(self, session, run, user, message, side, params, sampling, gate, defences, speculate, conv):
        """One turn's screens: the message at once, the answers as they stream, then the privacy
        panel and the latency readout, then the attacker's guess."""
        streams = ["unsteered", "steered"] if side else ["steered"]
        C = effective_strength(params)
        decoding = {**sampling.as_dict(), "seed": sampling.seed}
        # the summary's clock starts with the turn: the first token's time includes the context search
        used = self.store.context_entries(user, message, max_tokens=self.context_tokens, count_tokens=self.count_tokens)
        context = "\n".join(e["line"] for e in used)
        shaped = shaped_by(used, defences)
        screen = TurnScreen(conv, message, {s: settings_line(s, params.as_dict(), C, decoding, shaped) for s in streams})
        skip, busy = gr.skip(), (gr.update(interactive=False), gr.update(visible=True))
        v = screen.views()
        yield v["unsteered"], v["steered"], TOKENS_OPEN, skip, skip, status_html(screen.states), skip, \
            message_box(busy=True), *busy

        turn = {"role": "user", "content": message}
        transcript, events = CloudTranscript(), []
        private = defences is not None and defences.private is not None
        spec = DecodeSpec("side_by_side" if side else "steered", params, sampling, gate=gate, defences=defences,
                          speculate=speculate, overlap=self.remote() and not private)
        stream = self.engine.stream(conv["steered"] + [turn], context, spec, transcript,
                                    unsteered_messages=conv["unsteered"] + [turn],
                                    cloud_messages=public_messages(conv) + [turn] if private else None)
        finished = yield from self._tokens(session, run, stream, screen, events)
        if not finished:
            return
        if not session.current(run):
            ending = session.ending(run)
            if ending:
                yield ending
            return
        screen.summary.latency.done()
        yield from self._finish(session, run, user, screen, context, transcript, events, defences, speculate)

    def _tokens(self, session, run, stream, screen: TurnScreen, events: list):
        """Streams the answers onto the screen, at most every UPDATE_EVERY_S; returns False when
        the turn ended early (Stop, a reset, a refusal), True when the answers are complete."""
        skip, token_view, last = gr.skip(), TOKENS_OPEN, time.perf_counter()
        try:
            for ev in stream:
                if not session.current(run):  # ended by Stop, a new conversation or another user
                    stream.close()
                    ending = session.ending(run)
                    if ending:
                        yield ending
                    return False
                screen.summary.add(ev)
                if ev.stream == "steered":
                    events.append(ev)
                    token_view += token_span(ev)
                if ev.finish:
                    screen.states[ev.stream] = f"done · {screen.summary[ev.stream].tokens} tokens"
                if ev.finish or time.perf_counter() - last >= UPDATE_EVERY_S:
                    v, t = screen.views(), time.perf_counter()
                    status = status_html(screen.states) if ev.finish else skip
                    yield v["unsteered"], v["steered"], token_view, skip, skip, status, skip, skip, skip, skip
                    last = time.perf_counter()
                    screen.summary.latency.add_ui(last - t)
        except EXPECTED as exc:
            warn(refusal("chat", exc))
            v = {s: screen.conv[f"{s}_view"] if s in screen.settings else skip for s in ("unsteered", "steered")}
            yield (v["unsteered"], v["steered"], TOKENS_EMPTY, skip, skip, "", skip, message_box(screen.message),
                   gr.update(interactive=True), gr.update(visible=False))
            return False
        return True

    def _finish(self, session, run, user, screen: TurnScreen, context, transcript, events, defences, speculate):
        """The finished turn: the conversation each side continues, the privacy panel and the
        latency readout; then, with two users or more, the simulated attacker's guess."""
        skip, conv, side, summary = gr.skip(), screen.conv, "unsteered" in screen.settings, screen.summary
        turn = {"role": "user", "content": screen.message}
        v = screen.views(final=True)
        tokenizer = self.engine.cloud.tokenizer
        _, reply, drafts = cloud_view(transcript, "steered", tokenizer)
        private = defences is not None and defences.private is not None
        sent = public_messages(conv) + [turn]  # the steered conversation as the cloud has it
        new = {**conv, "steered": conv["steered"] + [turn, {"role": "assistant", "content": summary["steered"].text}],
               "steered_view": v["steered"],
               "public": sent + [{"role": "assistant", "content": reply if private else summary["steered"].text}]}
        if side:
            new.update(unsteered=conv["unsteered"] + [turn, {"role": "assistant", "content": summary["unsteered"].text}],
                       unsteered_view=v["unsteered"])
        echoes = [m["content"] for m in sent if m["role"] == "assistant"]
        audit = audit_reply(self.store.entries(user), sent, transcript, tokenizer)
        deny = deny_check(defences, transcript, summary["steered"], tokenizer)
        spec = summary["steered"].speculation if speculate > 1 else None
        split = SplitView.of(events, tokenizer) if private else None

        def panel():
            return privacy_html(transcript, context, self.engine.same_model, echoes, audit, deny, reply, drafts, split)
        shared = self.engine.same_model and speculate == 1
        users = self.store.users()
        guessing = len(users) >= 2  # the attacker needs someone to tell the user from
        note = "the simulated cloud attacker is guessing who you are; a message sent now waits for it" \
            if guessing else ""
        yield (v["unsteered"], v["steered"], tokens_html(events), panel(),
               self.latency_readout(summary.latency.summary(), shared, spec),
               status_html(screen.states, note), new,
               message_box(), gr.update(interactive=True), gr.update(visible=False))
        if guessing and session.current(run):
            self.guess(audit, user, users, transcript, sent, calibrate=side)
            if session.current(run):
                yield skip, skip, skip, panel(), skip, status_html(screen.states), skip, skip, skip, skip

    def guess(self, audit, user, users, transcript, messages, calibrate: bool = False):
        """The simulated cloud attacker's guess among the store's users (the first MAX_CANDIDATES);
        with `calibrate` (side by side), against the unsteered answer: the cloud's own, no one's data
        in it (after the first turn it answers the unsteered conversation, which differs)."""
        if self._attacker is None:
            self._attacker = PersonaAttacker(attacker_model(self.engine)[0])
        candidates = users[:MAX_CANDIDATES] + ([user] if user not in users[:MAX_CANDIDATES] else [])
        profiles = {u: self._attacker.profile(self.store.entries(u)) for u in candidates}
        audit.truth = user
        reference = transcript.token_ids["unsteered"] if calibrate else None
        audit.guess = self._attacker.guess(messages, transcript.token_ids["steered"], profiles, reference)

    def stop(self, conv, request: gr.Request = None):
        """Stop the running reply: the panes go back to the conversation as it was before it, and
        its question goes back into the message box, to edit or send again."""
        conv = conv or new_conversation()
        idle = (gr.update(interactive=True), gr.update(visible=False))
        u, s, tokens, status = conv["unsteered_view"], conv["steered_view"], TOKENS_EMPTY, status_html({"reply": "stopped"})
        session = self.session(request)
        skip = gr.skip()
        box = session.box_after_end()
        session.end((u, s, tokens, skip, skip, status, skip, box, *idle))
        return u, s, tokens, status, box, *idle

    def reset(self, side_by_side, request: gr.Request = None):
        """A new conversation (also after switching user or the side-by-side toggle). Nothing typed
        is lost: a question not yet sent stays in the box, and a running reply's question goes back
        into it, as Stop does."""
        idle = (gr.update(interactive=True), gr.update(visible=False))
        blank = privacy_html(None, "", False)
        session = self.session(request)
        box = session.box_after_end()
        session.end(([], [], TOKENS_EMPTY, blank, "", "", gr.skip(), box, *idle))
        return (new_conversation(), [], [], gr.update(visible=bool(side_by_side)), TOKENS_EMPTY, blank, "", "",
                box, *idle)

    # -- users ------------------------------------------------------------------------
    def user_choices(self, selected=None):
        return gr.update(choices=self.store.users(), value=selected)

    def page_load(self, user=None, request: gr.Request = None):
        """Every page load (a new tab, a reload) sees the users as they are now, with one picked so
        the first screen has someone to steer for: the user already picked, else the docs' demo
        persona, else the first user. A first run on an empty database loads the demo persona."""
        banner = (f"⚠️ **Read-only database:** {md_text(self.read_only)} Chatting works; nothing you add will be saved."
                  if self.read_only else "")
        users = self.store.users()
        if user not in users:
            if not users and not self.read_only and DEMO_PERSONA in persona_files():
                self.add_persona(DEMO_PERSONA)
                users = self.store.users()
            user = DEMO_PERSONA if DEMO_PERSONA in users else next(iter(users), None)
        return gr.update(choices=users, value=user), gr.update(value=banner, visible=bool(banner))

    def examples_for(self, user):
        return gr.update(samples=[[e] for e in persona_examples(user)])

    def add_user(self, name) -> str:
        name = F.NEW_USER.check(name).strip()
        if name in self.store.users():
            raise Refused(f"new user name: {name!r} already exists; pick it from the User list")
        self.store.add_user(name)
        return name

    def create_user(self, name):
        name = self.add_user(name)
        info(f"Created user {name}.")
        return self.user_choices(name), ""

    def add_persona(self, display_name) -> str:
        """Load an example persona into the store (again: only new entries); returns its user name."""
        return self._import_persona(display_name)["user"]

    def _import_persona(self, display_name) -> dict:
        files = persona_files()
        return self.store.import_file(files[F.Choice("example persona", tuple(files)).check(display_name)])

    def load_persona(self, display_name):
        result = self._import_persona(display_name)
        info(f"Loaded {result['user']}: {result['added']} new entries ({result['skipped']} already there).")
        return self.user_choices(result["user"])

    def persona_choices(self, selected=None):
        users = self.store.users()
        return gr.update(choices=users, value=[u for u in (selected or []) if u in users])

    # -- history ------------------------------------------------------------------------
    def history_rows(self, user):
        if not isinstance(user, str) or user not in self.store.users():
            return []
        return [[e["id"], e["kind"], e["title"] or "", e["text"], bool(e["pinned"]), bool(e["sensitive"])]
                for e in self.store.entries(user)]

    def _entry_fields(self, text, kind, title, pinned, sensitive) -> dict:
        return {"text": F.ENTRY_TEXT.check(text), "kind": F.KIND.check(kind), "title": F.TITLE.check(title) or None,
                "pinned": F.PINNED.check(pinned), "sensitive": F.SENSITIVE.check(sensitive)}

    def add_entry(self, user, text, kind, title, pinned, sensitive):
        user = self.check_user(user)
        self.store.add_entry(user, **self._entry_fields(text, kind, title, pinned, sensitive))
        return self.history_rows(user), ""

    def _entry_of(self, user, entry_id) -> tuple[str, dict]:
        """(user, entry) for an id of this user's, refused otherwise (deleted, or someone else's)."""
        user = self.check_user(user)
        entry_id = F.ENTRY_ID.check(entry_id)
        for e in self.store.entries(user):
            if e["id"] == entry_id:
                return user, e
        raise Refused(f"entry id: {entry_id} is not one of {user}'s entries (deleted in another tab?); "
                      "the table is refreshed, pick the row again")

    def select_entry(self, user, evt: gr.SelectData):
        """Clicking a table row loads that entry, by the id in the row's data (never its position)."""
        row = getattr(evt, "row_value", None)
        if not row:
            return gr.skip()
        try:
            _, e = self._entry_of(user, row[0])
        except Refused as exc:
            warn(refusal("select_entry", exc))
            return None, "", "note", "", False, False, self.history_rows(user), None
        return (e["id"], e["text"], e["kind"], e["title"] or "", bool(e["pinned"]), bool(e["sensitive"]), gr.skip(),
                e["version"])

    def update_entry(self, user, entry_id, text, kind, title, pinned, sensitive, version=None):
        """Save the form. `version` is the entry's when the row was picked: a save over another
        tab's newer edit is refused in words (StaleEntry), the form keeps what was typed."""
        user, e = self._entry_of(user, entry_id)
        self.store.update_entry(e["id"], version=F.VERSION.check(version),
                                **self._entry_fields(text, kind, title, pinned, sensitive))
        info(f"Saved entry #{e['id']}.")
        return self.history_rows(user), self.store.entry(e["id"])["version"]

    def ask_delete(self, user, entry_id):
        """Delete asks first: the confirmation names the entry it will delete."""
        user, e = self._entry_of(user, entry_id)
        preview = e["text"] if len(e["text"]) <= 60 else e["text"][:57] + "…"
        return (gr.update(visible=True), f"Delete entry **#{e['id']}** ({e['kind']}): “{md_text(preview)}”?",
                {"user": user, "id": e["id"]})

    def confirm_delete(self, pending):
        if not pending:
            raise Refused("delete: nothing to confirm; click Delete entry first")
        user, e = self._entry_of(pending["user"], pending["id"])
        self.store.delete_entry(e["id"])
        info(f"Deleted entry #{e['id']}.")
        return self.history_rows(user), gr.update(visible=False), None, None, ""

    def import_history(self, user, file, mode, into_selected):
        """An import goes into the file's own user (created if needed), unless the person asks for
        the selected user instead."""
        if not file:
            raise Refused("import: choose a .json or .jsonl file first")
        mode, into_selected = F.IMPORT_MODE.check(mode), F.INTO_SELECTED.check(into_selected)
        target = self.check_user(user) if into_selected else None
        try:
            data = read_import(file)
            victim = self.store.replace_victim(data, target) if mode == "replace" else None
            if victim and victim[0] != user:  # replacing someone other than the selected user: ask first
                raise Refused(f"import mode: replace would delete the {victim[1]} entries of {victim[0]}, whom this "
                              f"file names, not the selected user; select {victim[0]} first to confirm, or tick "
                              "'into the selected user'")
            result = self.store.import_user(data, mode=mode, user=target)
        except NoUserName:
            raise Refused("import: the file names no user; tick 'into the selected user' to import it there") from None
        info(f"Imported into {result['user']}: {result['added']} added, {result['skipped']} duplicates skipped.")
        return self.user_choices(result["user"]), self.history_rows(result["user"]), None

    def import_from_page(self, user, file, mode, into_selected):
        """The Import button: as `import_history`, but a file that cannot be imported (unreadable, not
        JSON, bad entries) is taken out of the upload box with the reason, so the next try starts from
        a fresh pick. A refusal about the options (which user, replace) keeps the file for the retry."""
        try:
            return self.import_history(user, file, mode, into_selected)
        except StoreError as exc:
            warn(refusal("import_history", exc))
            return gr.skip(), gr.skip(), None

    def export_history(self, user):
        user = self.check_user(user)
        out = Path(tempfile.mkdtemp(prefix="costeer-export-", dir=os.environ.get("GRADIO_TEMP_DIR"))) / "history.json"
        out.write_text(json.dumps(self.store.export_user(user), ensure_ascii=False, indent=1), encoding="utf-8")
        return str(out)

    def preview_context(self, user, message):
        user = self.check_user(user)
        message = F.MESSAGE.check(message)
        return self.context_for(user, message) or "(empty: this user has no history yet)"

    # -- blind A/B ratings ------------------------------------------------------------
    def ab_generate(self, user, message, T, eta, lam, alpha, beta, temperature, top_p, seed, max_new_tokens,
                    repetition_penalty=1.0, no_repeat_ngram_size=0, copy_guard=DEMO_COPY_GUARD):
        """Both answers at once, shown as A and B in a random order; the trial stays server-side in State.
        The Chat tab's settings, copy guard included, so the vote judges what Chat shows."""
        user = self.check_user(user)
        message = F.MESSAGE.check(message).strip()
        params = make_params(T, eta, lam, alpha, beta)
        sampling = make_sampling(temperature, top_p, seed, max_new_tokens, repetition_penalty, no_repeat_ngram_size)
        defences = self.defences_for(user, copy_guard=F.COPY_GUARD.check(copy_guard))
        out = self.engine.generate([{"role": "user", "content": message}], self.context_for(user, message),
                                   DecodeSpec("side_by_side", params, sampling, defences=defences))
        steered_side = self.rng.choice("AB")
        a, b = ((out["texts"]["steered"], out["texts"]["unsteered"]) if steered_side == "A"
                else (out["texts"]["unsteered"], out["texts"]["steered"]))
        trial = {"user": user, "message": message, "a": a, "b": b, "steered_side": steered_side,
                 "params": {**params.as_dict(), **sampling.as_dict()}}
        unlocked = [gr.update(interactive=True)] * len(VOTES)
        return (gr.update(value=a, label="A"), gr.update(value=b, label="B"), trial,
                "Read both answers, then vote. The sides are revealed after your vote.", *unlocked)

    def cast_vote(self, rater, trial, vote):
        """Outputs: reveal, trial (spent: a second vote is refused), A and B relabelled, buttons locked."""
        if not trial:
            raise Refused("vote: generate a pair of answers first (each pair takes one vote)")
        rater = F.RATER.check(rater)
        vote = F.VOTE.check(vote)
        vid = self.store.add_vote(rater, trial["user"], [{"role": "user", "content": trial["message"]}], trial["a"],
                                  trial["b"], trial["steered_side"], vote, trial["params"], self.engine.cloud.name,
                                  self.engine.device.name)
        steered = trial["steered_side"]
        other = "B" if steered == "A" else "A"
        names = {steered: "steered (CoSteer)", other: "cloud model alone"}
        return (f"Vote #{vid} saved. **{steered} was steered (CoSteer)**, {other} was the cloud model alone.", None,
                gr.update(label=f"A: {names['A']}"), gr.update(label=f"B: {names['B']}"),
                *[gr.update(interactive=False)] * len(VOTES))

    def latency_readout(self, latency: dict, shared: bool, speculation) -> str:
        """The reply's timing and, from it, the projection for real pairs (bench/projection.py)."""
        measured = self.measured(latency, shared)
        return latency_html(latency, self.remote(), shared, speculation and speculation.as_dict(),
                            (measured, projections(measured)), self.engine.device.lm.precision)

    def measured(self, latency: dict, shared: bool):
        """This machine's measured split of a reply, the projection's input (bench/projection.py)."""
        return measured_from(latency, self.engine.device.lm.model, shared, cpu_name())

    # -- the named API -------------------------------------------------------------------
    def generate_pair(self, user, message, T=DEMO["T"], eta=DEMO["eta"], lam=DEMO["lam"], max_new_tokens=128,
                      repetition_penalty=DEMO_DECODING["repetition_penalty"],
                      no_repeat_ngram_size=DEMO_DECODING["no_repeat_ngram_size"], copy_guard=DEMO_COPY_GUARD):
        user = self.check_user(user)
        message = F.MESSAGE.check(message).strip()
        params = make_params(T, eta, lam)
        sampling = make_sampling(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                                 no_repeat_ngram_size=no_repeat_ngram_size)
        defences = self.defences_for(user, copy_guard=F.COPY_GUARD.check(copy_guard))
        out = self.engine.generate([{"role": "user", "content": message}], self.context_for(user, message),
                                   DecodeSpec("side_by_side", params, sampling, defences=defences))
        return out["shown"]["unsteered"], out["shown"]["steered"]

    def chat_reply(self, user, message, side_by_side=True, T=DEMO["T"], eta=DEMO["eta"], lam=DEMO["lam"],
                   max_new_tokens=128, repetition_penalty=DEMO_DECODING["repetition_penalty"],
                   no_repeat_ngram_size=DEMO_DECODING["no_repeat_ngram_size"], copy_guard=DEMO_COPY_GUARD,
                   sigma=0.0, tau=0.0, speculate=1, private=False) -> dict:
        """One turn of a new conversation as the Chat tab runs it, for a script: the answers as shown,
        the settings and what shaped them, what the cloud received with its privacy audit, and the
        latency readout with its projection for real pairs."""
        user = self.check_user(user)
        message = F.MESSAGE.check(message).strip()
        side = F.SIDE_BY_SIDE.check(side_by_side)
        params = make_params(T, eta, lam)
        sampling = make_sampling(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                                 no_repeat_ngram_size=no_repeat_ngram_size)
        sigma, tau, copy_guard = F.SIGMA.check(sigma), F.TAU.check(tau), F.COPY_GUARD.check(copy_guard)
        private = F.PRIVATE.check(private)
        speculate = checked_speculate(speculate, private)
        defences = self.defences_for(user, sigma, tau, copy_guard, private)
        used = self.store.context_entries(user, message, max_tokens=self.context_tokens, count_tokens=self.count_tokens)
        messages, transcript = [{"role": "user", "content": message}], CloudTranscript()
        spec = DecodeSpec("side_by_side" if side else "steered", params, sampling, defences=defences,
                          speculate=speculate, overlap=self.remote() and not private)
        events = []  # kept as they stream, so the latency summary times them as they come
        summary = ReplySummary.of(recorded(self.engine.stream(messages, "\n".join(e["line"] for e in used), spec,
                                                             transcript), events))
        latency = summary.latency.summary()
        shared = self.engine.same_model and speculate == 1  # one batch: the device's rows ride in the cloud's pass
        return {"steered": summary["steered"].shown, "unsteered": summary["unsteered"].shown if side else None,
                "settings": {**params.as_dict(), "C": effective_strength(params), **sampling.as_dict(),
                             "copy_guard": copy_guard, "sigma": sigma, "tau": tau, "speculate": speculate,
                             "private": private,
                             "context_entries": [e["id"] for e in used],
                             "deny_list_ids": len(defences.deny_ids) if defences else 0},
                "privacy": {**self._privacy_report(user, messages, transcript, summary, defences),
                            "kept_back": kept_back(events) if private else None},
                "latency": {**latency, "device_precision": self.engine.device.lm.precision,
                            "device_in_cloud_batch": shared,
                            "projection": projections(self.measured(latency, shared))}}

    def _privacy_report(self, user, messages, transcript, summary, defences) -> dict:
        """What the cloud received per stream (prompt, chosen tokens, rejected drafts) and the audit:
        the user's distinctive terms in it, steered against unsteered, and the deny-list's check."""
        tokenizer = self.engine.cloud.tokenizer
        audit = audit_reply(self.store.entries(user), messages, transcript, tokenizer)
        received = {s: dict(zip(("prompt", "reply", "rejected_drafts"), cloud_view(transcript, s, tokenizer)))
                    for s in transcript.prompt_ids}

        def exposed(e):
            return None if e is None else {"terms": e.terms, "share": round(e.share, 4),
                                           "exposed": [t.text for t in e.exposed]}
        deny = deny_check(defences, transcript, summary["steered"], tokenizer)
        return {"cloud_received": received, "context_sent": False, "steered_exposure": exposed(audit.steered),
                "unsteered_exposure": exposed(audit.unsteered), "attributable_to_steering": audit.attributable,
                "deny_list": deny}

    def edit_history(self, user, entry_id, text, kind=None, title=None, pinned=None, sensitive=None) -> dict:
        """Change one of the user's entries; a field left out (None) keeps its value."""
        user, e = self._entry_of(user, entry_id)
        keep = {"kind": e["kind"], "title": e["title"] or "", "pinned": bool(e["pinned"]),
                "sensitive": bool(e["sensitive"])}
        given = {"kind": kind, "title": title, "pinned": pinned, "sensitive": sensitive}
        merged = {k: keep[k] if v is None else v for k, v in given.items()}
        self.store.update_entry(e["id"], **self._entry_fields(text, **merged))
        return next(h for h in self.history(user) if h["id"] == e["id"])

    def delete_history(self, user, entry_id) -> int:
        """Delete one of the user's entries (an id of another user's is refused); returns its id."""
        _, e = self._entry_of(user, entry_id)
        self.store.delete_entry(e["id"])
        return e["id"]

    def history(self, user) -> list[dict]:
        user = self.check_user(user)
        return [{k: (bool(e[k]) if k in ("pinned", "sensitive") else e[k])
                 for k in ("id", "kind", "title", "text", "pinned", "sensitive")} for e in self.store.entries(user)]

    def add_history(self, user, text, kind="note", sensitive=False):
        user = self.check_user(user)
        return self.store.add_entry(user, F.ENTRY_TEXT.check(text), kind=F.KIND.check(kind),
                                    sensitive=F.SENSITIVE.check(sensitive))

    def ratings_summary(self) -> dict:
        s = summarize_votes(self.store.votes())
        return {"counts": s["counts"], "n": s["overall"]["n"], "steered_win_rate": s["overall"]["win_rate"],
                "ci95": [s["overall"]["ci_low"], s["overall"]["ci_high"]], "by_params": s["by_params"]}

    # -- results view ----------------------------------------------------------------------
    def results(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        s = summarize_votes(self.store.votes())
        groups = {"all settings": s["overall"], **s["by_params"]}
        rows = [[name, g["n"], g["wins"], g["ties"], g["losses"], _pct(g["win_rate"]),
                 f"[{_pct(g['ci_low'])}, {_pct(g['ci_high'])}]"] for name, g in groups.items()]
        fig, ax = plt.subplots(figsize=(7, 3.2))
        names = list(groups)
        rates = [g["win_rate"] if g["n"] else 0 for g in groups.values()]
        err = [[max(0, r - g["ci_low"]) if g["n"] else 0 for r, g in zip(rates, groups.values())],
               [max(0, g["ci_high"] - r) if g["n"] else 0 for r, g in zip(rates, groups.values())]]
        ax.barh(names, rates, xerr=err, color="#4f7cac", capsize=4)
        ax.axvline(0.5, color="#999", linestyle="--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_xlabel("steered win rate (tie = ½), 95% bootstrap interval")
        fig.tight_layout()
        plt.close(fig)
        return rows, fig

    def votes_csv(self):
        out = Path(tempfile.mkdtemp(prefix="costeer-votes-", dir=os.environ.get("GRADIO_TEMP_DIR"))) / "votes.csv"
        buf = io.StringIO()
        w = csv.writer(buf)
        cols = ["id", "created_at", "rater", "user", "vote", "steered_side", "answer_a", "answer_b",
                "conversation", "params", "cloud_model", "local_model"]
        w.writerow(cols)
        for v in self.store.votes():
            w.writerow([spreadsheet_safe(json.dumps(v[c], ensure_ascii=False) if c in ("conversation", "params") else v[c])
                        for c in cols])
        out.write_text(buf.getvalue(), encoding="utf-8")
        return str(out)

    # -- parameter explorer ----------------------------------------------------------
    def _answer(self, messages, context, mode, params, sampling, defences=None) -> dict:
        """One answer with its fluency: the mean log-probability the cloud alone gives its tokens."""
        answer = ReplySummary.of(self.engine.stream(messages, context, DecodeSpec(mode, params, sampling, defences=defences)))[mode]
        return {"text": answer.text, "fluency": answer.fluency, "repeated": repeated_ngram_share(answer.token_ids),
                "copied": copied_run(self.engine.cloud.tokenizer, answer.text, context)}

    def explore(self, user, message, param, values_text, T, eta, lam, alpha, beta, max_new_tokens,
                repetition_penalty=1.0, no_repeat_ngram_size=0, progress=gr.Progress()):
        """Steer one message over values of one parameter. Each answer gets the persona-overlap
        score and a fluency check; settings with the same C give the same answer, so they run once."""
        user = self.check_user(user)
        message = F.MESSAGE.check(message).strip()
        param = F.SWEEP.check(param)
        spec = F.SWEEPABLE[param]
        items = [v.strip() for v in F.SWEEP_VALUES.check(values_text).replace(";", ",").split(",") if v.strip()]
        try:
            values = [spec.check(float(v)) for v in items]
        except ValueError as exc:
            if isinstance(exc, Refused):
                raise Refused(f"values: each must be {spec.allowed}; {exc}") from None
            raise Refused(f"values: a comma-separated list of numbers, each {spec.allowed}, got {values_text!r}") from None
        if not 1 <= len(values) <= 8:
            raise Refused(f"values: 1 to 8 numbers, each {spec.allowed}, got {len(values)}")
        base = {"T": T, "eta": eta, "lam": lam}
        make_params(T, eta, lam, alpha, beta)
        sampling = make_sampling(0.0, 1.0, None, max_new_tokens, repetition_penalty, no_repeat_ngram_size)
        context = self.context_for(user, message)
        history = " ".join(e["text"] for e in self.store.entries(user))
        messages = [{"role": "user", "content": message}]
        progress(0, desc="unsteered baseline")
        alone = self._answer(messages, context, "unsteered", SteeringParams(), sampling)
        floor = alone["fluency"] - FLUENCY_MARGIN

        excludes = persona_excludes(user)

        def row(setting, C, a, note=""):
            fluent = a["fluency"] >= floor and a["repeated"] <= MAX_REPEATED
            named = contradictions(a["text"], excludes)
            problems = ([] if fluent else ["⚠️ looping" if a["repeated"] > MAX_REPEATED else "⚠️ not fluent"]) + \
                ([f"⚠️ copies the history ({a['copied']} tokens in a row)"] if a["copied"] >= COPY_RUN else []) + \
                ([f"⚠️ contradicts it: {', '.join(named)}"] if named else [])
            return [setting, round(C, 3), round(overlap_score(a["text"], history), 3), round(a["fluency"], 2),
                    round(a["repeated"], 2), a["copied"], ", ".join(named) if excludes else "–",
                    ("; ".join(problems) or "ok") + note, a["text"]]

        rows, Cs, scores, by_C = [row("unsteered", 0.0, alone)], [], [], {}
        for i, v in enumerate(values):
            progress((i + 1) / (len(values) + 1), desc=f"{param} = {v:g}")
            params = make_params(**{**base, param: v}, alpha=alpha, beta=beta)
            C = effective_strength(params)
            key = f"{C:.12g}"
            note = ""
            if key in by_C:  # the policy depends on the settings only through C
                a, note = by_C[key][1], f" (same C as {by_C[key][0]}: same answer, not run again)"
            else:
                a = self._answer(messages, context, "steered", params, sampling, self.defences_for(user))
                by_C[key] = (f"{param} = {v:g}", a)
            rows.append(row(f"{param} = {v:g}", C, a, note))
            Cs.append(C)
            scores.append(rows[-1][2] if rows[-1][7].startswith("ok") else float("nan"))
        fig = score_and_strength(values, scores, Cs, param, "word overlap with history (answers that pass the check)",
                                 "personalization score")
        return rows, fig


def _pct(x) -> str:
    return "–" if x != x else f"{100 * x:.0f}%"


KIND_CHOICES = list(KINDS)
