"""Handlers behind the app's components: validate, call the engine and the store, format.

They hold no algorithm: steering lives in `costeer`, storage and retrieval in `user_store`.
Bad input raises gr.Error (shown in the page, nothing written); the app keeps working.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from costeer.cloud import CloudError
from costeer.decoding import CloudTranscript, ConfidenceGate, CoSteerEngine, Sampling
from costeer.plots import score_and_strength
from costeer.policy import SteeringParams, effective_strength
from costeer.stats import overlap_score, summarize_votes
from user_store import KINDS, StoreError, UserStore

from .render import privacy_html, strength_markdown, tokens_html

MAX_MESSAGE_CHARS = 4000
CONTEXT_TOKENS = 256
PERSONAS = Path(__file__).resolve().parents[1] / "assets" / "personas"
SWEEPABLE = {"T": (1, 100), "eta": (0.5, 20.0), "lam": (0.1, 5.0)}


def new_conversation() -> dict:
    return {"steered": [], "unsteered": []}


def persona_files() -> dict[str, Path]:
    """Example personas shipped in assets/, by display name."""
    out = {}
    for path in sorted(PERSONAS.glob("*.json")):
        out[json.loads(path.read_text(encoding="utf-8"))["user"]] = path
    return out


def make_params(T, eta, lam, alpha=2.0, beta=1.0) -> SteeringParams:
    try:
        return SteeringParams(T=int(T) if float(T).is_integer() else T, eta=float(eta), lam=float(lam),
                              alpha=float(alpha), beta=float(beta))
    except (ValueError, TypeError) as exc:
        raise gr.Error(str(exc)) from None


def make_sampling(temperature=0.0, top_p=1.0, seed=None, max_new_tokens=128) -> Sampling:
    try:
        seed = None if seed in (None, "", -1) or (isinstance(seed, float) and math.isnan(seed)) else int(seed)
        return Sampling(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p), seed=seed)
    except (ValueError, TypeError) as exc:
        raise gr.Error(str(exc)) from None


def cloud_errors_shown(events):
    """A failing remote cloud, or a conversation too long for the model, becomes a visible error."""
    try:
        yield from events
    except (CloudError, ValueError) as exc:
        raise gr.Error(str(exc)) from None


def make_gate(on, threshold, patience, mode="paper") -> ConfidenceGate | None:
    if not on:
        return None
    try:
        return ConfidenceGate(float(threshold), int(patience), mode)
    except (ValueError, TypeError) as exc:
        raise gr.Error(str(exc)) from None


def check_message(message) -> str:
    if not isinstance(message, str) or not message.strip():
        raise gr.Error("message: type something first (it is empty)")
    if len(message) > MAX_MESSAGE_CHARS:
        raise gr.Error(f"message: at most {MAX_MESSAGE_CHARS} characters, got {len(message)}")
    return message.strip()


def check_user(store: UserStore, user) -> str:
    if not user:
        raise gr.Error("user: choose a user, create one, or load an example persona")
    if user not in store.users():
        raise gr.Error(f"user: unknown user {user!r}")
    return user


@dataclass
class Studio:
    """Everything a handler needs, passed explicitly (no module globals)."""

    engine: CoSteerEngine
    store: UserStore
    context_tokens: int = CONTEXT_TOKENS
    rng: random.Random = field(default_factory=random.Random)

    # -- context and strength -------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.engine.device.tokenizer(text, add_special_tokens=False)["input_ids"])

    def context_for(self, user: str, message: str) -> str:
        return self.store.build_context(user, message, max_tokens=self.context_tokens, count_tokens=self.count_tokens)

    @staticmethod
    def strength(T, eta, lam, alpha, beta) -> str:
        try:
            return strength_markdown(effective_strength(SteeringParams(T=int(T), eta=float(eta), lam=float(lam),
                                                                       alpha=float(alpha), beta=float(beta))))
        except (ValueError, TypeError) as exc:
            return strength_markdown(None, str(exc))

    def _generate(self, *args):
        try:
            return self.engine.generate(*args)
        except (CloudError, ValueError) as exc:
            raise gr.Error(str(exc)) from None

    # -- chat ---------------------------------------------------------------------------
    def chat(self, user, message, side_by_side, T, eta, lam, alpha, beta, temperature, top_p, seed,
             max_new_tokens, conv, gate_on=False, gate_threshold=0.1, gate_patience=3, gate_mode="paper"):
        """Stream one turn. Yields (unsteered chat, steered chat, tokens html, privacy html, conv, message box)."""
        user = check_user(self.store, user)
        message = check_message(message)
        params = make_params(T, eta, lam, alpha, beta)
        sampling = make_sampling(temperature, top_p, seed, max_new_tokens)
        gate = make_gate(gate_on, gate_threshold, gate_patience, gate_mode)
        conv = {k: list(v) for k, v in (conv or new_conversation()).items()}
        context = self.context_for(user, message)
        turn = {"role": "user", "content": message}
        steered_msgs = conv["steered"] + [turn]
        unsteered_msgs = conv["unsteered"] + [turn]
        mode = "side_by_side" if side_by_side else "steered"
        texts = {"steered": "", "unsteered": ""}
        events = []
        transcript = CloudTranscript()

        def view():
            s_chat = steered_msgs + [{"role": "assistant", "content": texts["steered"]}]
            u_chat = unsteered_msgs + [{"role": "assistant", "content": texts["unsteered"]}] if side_by_side else conv["unsteered"]
            return u_chat, s_chat

        stream = self.engine.stream(steered_msgs, context, mode, params, sampling, transcript,
                                    unsteered_messages=unsteered_msgs, gate=gate)
        for ev in cloud_errors_shown(stream):
            texts[ev.stream] += ev.text
            if ev.stream == "steered":
                events.append(ev)
            u_chat, s_chat = view()
            yield u_chat, s_chat, tokens_html(events), gr.skip(), conv, ""
        u_chat, s_chat = view()
        conv = {"steered": s_chat, "unsteered": u_chat}
        yield u_chat, s_chat, tokens_html(events), privacy_html(transcript, context, self.engine.same_model), conv, ""

    # -- users and history ----------------------------------------------------------
    def user_choices(self, selected=None):
        return gr.update(choices=self.store.users(), value=selected)

    def create_user(self, name):
        try:
            self.store.add_user(name)
        except StoreError as exc:
            raise gr.Error(str(exc)) from None
        return self.user_choices(name.strip()), ""

    def load_persona(self, display_name):
        files = persona_files()
        if display_name not in files:
            raise gr.Error(f"persona: unknown example {display_name!r}")
        result = self.store.import_file(files[display_name])
        gr.Info(f"Loaded {result['user']}: {result['added']} new entries ({result['skipped']} already there).")
        return self.user_choices(result["user"])

    def history_rows(self, user):
        if not user or user not in self.store.users():
            return []
        return [[e["id"], e["kind"], e["title"] or "", e["text"], bool(e["pinned"])] for e in self.store.entries(user)]

    def add_entry(self, user, text, kind, title, pinned):
        user = check_user(self.store, user)
        try:
            self.store.add_entry(user, text, kind=kind, title=title or None, pinned=bool(pinned))
        except StoreError as exc:
            raise gr.Error(str(exc)) from None
        return self.history_rows(user), ""

    def _entry_of(self, user, entry_id) -> int:
        user = check_user(self.store, user)
        try:
            entry_id = int(entry_id)
        except (TypeError, ValueError):
            raise gr.Error("entry id: pick a row of the table first") from None
        if entry_id not in {e["id"] for e in self.store.entries(user)}:
            raise gr.Error(f"entry id: {entry_id} is not one of {user}'s entries")
        return entry_id

    def update_entry(self, user, entry_id, text, kind, title, pinned):
        entry_id = self._entry_of(user, entry_id)
        try:
            self.store.update_entry(entry_id, text=text, kind=kind, title=title or None, pinned=bool(pinned))
        except StoreError as exc:
            raise gr.Error(str(exc)) from None
        return self.history_rows(user)

    def delete_entry(self, user, entry_id):
        entry_id = self._entry_of(user, entry_id)
        self.store.delete_entry(entry_id)
        return self.history_rows(user)

    def select_entry(self, user, evt: gr.SelectData):
        """Clicking a table row loads that entry into the edit form."""
        rows = self.history_rows(user)
        if not rows or evt.index is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        row = rows[evt.index[0]]
        return row[0], row[3], row[1], row[2], row[4]

    def import_history(self, user, file, mode):
        if file is None:
            raise gr.Error("import: choose a .json or .jsonl file first")
        try:
            result = self.store.import_file(file, mode=mode, user=user or None)
        except StoreError as exc:
            raise gr.Error(str(exc)) from None
        gr.Info(f"Imported into {result['user']}: {result['added']} added, {result['skipped']} duplicates skipped.")
        return self.user_choices(result["user"]), self.history_rows(result["user"])

    def export_history(self, user):
        user = check_user(self.store, user)
        out = Path(tempfile.mkdtemp(prefix="costeer-export-", dir=os.environ.get("GRADIO_TEMP_DIR"))) / "history.json"
        out.write_text(json.dumps(self.store.export_user(user), ensure_ascii=False, indent=1), encoding="utf-8")
        return str(out)

    def preview_context(self, user, message):
        user = check_user(self.store, user)
        return self.context_for(user, check_message(message)) or "(empty: this user has no history yet)"

    # -- blind A/B ratings ------------------------------------------------------------
    def ab_generate(self, user, message, T, eta, lam, alpha, beta, temperature, top_p, seed, max_new_tokens):
        """Both answers at once, shown as A and B in a random order; the trial stays server-side in State."""
        user = check_user(self.store, user)
        message = check_message(message)
        params = make_params(T, eta, lam, alpha, beta)
        sampling = make_sampling(temperature, top_p, seed, max_new_tokens)
        out = self._generate([{"role": "user", "content": message}], self.context_for(user, message),
                             "side_by_side", params, sampling)
        steered_side = self.rng.choice("AB")
        a, b = ((out["texts"]["steered"], out["texts"]["unsteered"]) if steered_side == "A"
                else (out["texts"]["unsteered"], out["texts"]["steered"]))
        trial = {"user": user, "message": message, "a": a, "b": b, "steered_side": steered_side,
                 "params": {**params.as_dict(), "temperature": sampling.temperature, "top_p": sampling.top_p,
                            "seed": sampling.seed, "max_new_tokens": sampling.max_new_tokens}}
        return a, b, trial, "Read both answers, then vote. The sides are revealed after your vote."

    def cast_vote(self, rater, trial, vote):
        if not trial:
            raise gr.Error("vote: generate a pair of answers first")
        vid = self.rate(rater, trial["user"], trial["message"], trial["a"], trial["b"], trial["steered_side"], vote,
                        trial["params"])
        steered = trial["steered_side"]
        other = "B" if steered == "A" else "A"
        return (f"Vote #{vid} saved. **{steered} was steered (CoSteer)**, {other} was the cloud model alone.", None)

    # -- the named API -------------------------------------------------------------------
    def generate_pair(self, user, message, T=20, eta=10.0, lam=2.0, max_new_tokens=128):
        user = check_user(self.store, user)
        message = check_message(message)
        out = self._generate([{"role": "user", "content": message}], self.context_for(user, message),
                             "side_by_side", make_params(T, eta, lam), make_sampling(max_new_tokens=max_new_tokens))
        return out["texts"]["unsteered"], out["texts"]["steered"]

    def history(self, user) -> list[dict]:
        user = check_user(self.store, user)
        return [{k: e[k] for k in ("id", "kind", "title", "text", "pinned")} for e in self.store.entries(user)]

    def add_history(self, user, text, kind="note"):
        user = check_user(self.store, user)
        try:
            return self.store.add_entry(user, text, kind=kind)
        except StoreError as exc:
            raise gr.Error(str(exc)) from None

    def rate(self, rater, user, message, answer_a, answer_b, steered_side, vote, params=None):
        try:
            return self.store.add_vote(rater, user, [{"role": "user", "content": message}], answer_a, answer_b,
                                       steered_side, vote, params or {}, self.engine.cloud.name, self.engine.device.name)
        except StoreError as exc:
            raise gr.Error(str(exc)) from None

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
        return rows, fig

    def votes_csv(self):
        out = Path(tempfile.mkdtemp(prefix="costeer-votes-", dir=os.environ.get("GRADIO_TEMP_DIR"))) / "votes.csv"
        buf = io.StringIO()
        w = csv.writer(buf)
        cols = ["id", "created_at", "rater", "user", "vote", "steered_side", "answer_a", "answer_b",
                "conversation", "params", "cloud_model", "local_model"]
        w.writerow(cols)
        for v in self.store.votes():
            w.writerow([json.dumps(v[c], ensure_ascii=False) if c in ("conversation", "params") else v[c] for c in cols])
        out.write_text(buf.getvalue(), encoding="utf-8")
        return str(out)

    # -- parameter explorer ----------------------------------------------------------
    def explore(self, user, message, param, values_text, T, eta, lam, alpha, beta, max_new_tokens,
                progress=gr.Progress()):
        user = check_user(self.store, user)
        message = check_message(message)
        if param not in SWEEPABLE:
            raise gr.Error(f"parameter: choose one of {', '.join(SWEEPABLE)}")
        lo, hi = SWEEPABLE[param]
        try:
            values = [float(v) for v in str(values_text).replace(";", ",").split(",") if v.strip()]
        except ValueError:
            raise gr.Error(f"values: a comma-separated list of numbers in [{lo}, {hi}], got {values_text!r}") from None
        if not 1 <= len(values) <= 8 or any(not lo <= v <= hi for v in values):
            raise gr.Error(f"values: 1 to 8 numbers, each in [{lo}, {hi}], got {values_text!r}")
        base = {"T": T, "eta": eta, "lam": lam}
        sampling = make_sampling(0.0, 1.0, None, max_new_tokens)
        context = self.context_for(user, message)
        history = " ".join(e["text"] for e in self.store.entries(user))
        messages = [{"role": "user", "content": message}]
        progress(0, desc="unsteered baseline")
        unsteered = self._generate(messages, context, "unsteered", make_params(T, eta, lam, alpha, beta), sampling)["texts"]["unsteered"]
        rows, Cs, scores = [], [], []
        for i, v in enumerate(values):
            progress((i + 1) / (len(values) + 1), desc=f"{param} = {v:g}")
            params = make_params(**{**base, param: v}, alpha=alpha, beta=beta)
            text = self._generate(messages, context, "steered", params, sampling)["texts"]["steered"]
            C = effective_strength(params)
            score = overlap_score(text, history)
            Cs.append(C)
            scores.append(score)
            rows.append([f"{param} = {v:g}", round(C, 3), round(score, 3), text])
        rows.insert(0, ["unsteered", 0.0, round(overlap_score(unsteered, history), 3), unsteered])
        fig = score_and_strength(values, scores, Cs, param, "word overlap with history", "personalization score")
        return rows, fig


def _pct(x) -> str:
    return "–" if x != x else f"{100 * x:.0f}%"


KIND_CHOICES = list(KINDS)
