"""The CoSteer token loop: per step, b from the cloud, d from the device, p from the steering
processor; choose a token, emit it, feed it back.

Streams. A *stream* is an answer the user sees: "unsteered" (the cloud alone) or "steered".
Side by side runs both; they diverge after the first token steering changes. Where the rows
live (one batch for one model, or a cloud and a device apart) is the engine's arrangement
(arrangements.py); the loop below does not know which it runs on.

Events, not strings: every consumer (CLI, UI, bench, eval) reads TokenEvents. `CloudTranscript`
records every token id that went to the cloud, which is how the UI shows what crossed over.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import torch

from costeer.engine.arrangements import OneModel, Split
from costeer.engine.cloud import CloudLM
from costeer.engine.device import DeviceLM
from costeer.models.load import LoadedModel
from costeer.steering.copyguard import CopyGuard
from costeer.steering.defences import Defences, cap_at_base, deny_margin
from costeer.steering.policy import effective_strength
from costeer.steering.private import SplitTranscript
from costeer.engine.prompts import build_prompts, check_fits, conversation_ids, system_with_context  # noqa: F401  (re-exported)
from costeer.engine.sampling import Chooser, Sampling, resolve_seed  # noqa: F401  (re-exported)
from costeer.engine.spec import MODES, DecodeSpec  # noqa: F401  (re-exported)
from costeer.engine.text import TextStream
from costeer.steering.processors import ConfidenceGate, kl_divergence, processor  # noqa: F401

if TYPE_CHECKING:
    from costeer.engine.speculative import DraftRound

TOP_K_SHOWN = 5
LOGPROB_FLOOR = -30.0  # base_logprob of a token the cloud gave no log-prob for (outside its top-k)


@dataclass
class TokenEvent:
    """One emitted token of one stream; the CLI prints these, the UI highlights them."""

    stream: str
    step: int
    token_id: int
    text: str  # the text this token releases (may be "" while a character or a possible stop string is open)
    changed: bool  # steering moved the top choice away from the base distribution's argmax
    top_base: list[tuple[str, float]]
    top_steered: list[tuple[str, float]]
    kl: float  # KL(steered || base) in nats; 0 for the unsteered stream
    finish: str | None = None  # "eos", "stop" or "length" on a stream's last event
    device_skipped: bool = False  # the confidence gate (or an incomplete character) skipped the device
    cloud_ms: float = 0.0  # the forward (or HTTP round trip) that produced this step's b
    device_ms: float = 0.0  # the device passes that produced this step's d (0 when shared or skipped)
    steer_ms: float = 0.0  # the steering update, repetition control and the choice, for this stream
    base_logprob: float = 0.0  # log b[token]: how likely the cloud alone found the chosen token (fluency)
    deny_margin: float = 0.0  # max log p - log b over the deny-listed ids (<= 0: none made likelier)
    draft: DraftRound | None = None  # speculation only (speculative.DraftRound); None in the per-token loop
    sent_id: int | None = None  # Private mode: the stand-in the cloud received instead of this token (None: the token)

    @property
    def sent(self) -> int:
        """The token id the cloud received at this position."""
        return self.token_id if self.sent_id is None else self.sent_id



@dataclass
class CloudTranscript:
    """Everything the cloud received, per stream: the prompt's token ids (and their text, for
    display), then one chosen token id per step."""

    prompt_ids: dict[str, list[int]] = field(default_factory=dict)
    prompt_text: dict[str, str] = field(default_factory=dict)
    token_ids: dict[str, list[int]] = field(default_factory=dict)
    drafts: dict[str, list[list[int]]] = field(default_factory=dict)  # speculation, per round: drafted ids the cloud saw, not kept


class CoSteerEngine:
    """Streams CoSteer decoding for one conversation at a time; holds no per-conversation state.

    `CoSteerEngine(cloud, device)` splits the roles (any CloudLM, a DeviceLM);
    `CoSteerEngine.one_model(lm)` is the single-process demo with one model in both roles."""

    def __init__(self, cloud: CloudLM, device: DeviceLM, arrangement=None):
        self.cloud, self.device = cloud, device
        self.arrangement = arrangement or Split(cloud, device)
        self._pieces: dict[int, str] = {}

    @classmethod
    def one_model(cls, lm: LoadedModel) -> "CoSteerEngine":
        arrangement = OneModel(lm)
        return cls(arrangement.cloud, arrangement.device, arrangement)

    @property
    def same_model(self) -> bool:
        """True for the single-process demo (one model plays both roles)."""
        return self.arrangement.name == "one-model"

    @property
    def vocab_map(self):
        return self.device.vocab_map

    @property
    def eos_ids(self) -> frozenset[int]:
        return self.cloud.eos_ids

    def stream(self, messages: list[dict], context: str = "", spec: DecodeSpec = DecodeSpec(),
               transcript: CloudTranscript | None = None, unsteered_messages: list[dict] | None = None,
               cloud_messages: list[dict] | None = None) -> Iterator[TokenEvent]:
        """Yield TokenEvents until every stream of `spec.mode` has finished; `spec` (spec.py) says
        how to decode. `transcript` records what the cloud received; `unsteered_messages` lets the
        unsteered stream continue its own conversation in a multi-turn side-by-side chat. In Private
        mode `cloud_messages` is the steered conversation as the cloud received it (the public
        text of earlier replies); the device reads `messages`. Each token is decided by
        `Reply.decide`; the schedule (per token here, or speculative.rounds) only says which
        positions to decide, with which b, and when."""
        if cloud_messages is not None and not spec.private:
            raise ValueError("cloud_messages is for Private mode, where the cloud's conversation differs")
        prompts = self._cloud_prompts(cloud_messages or messages, unsteered_messages or messages, spec)
        reply = Reply(self, prompts, spec, transcript, context)
        if spec.speculative:
            from costeer.engine import speculative

            yield from speculative.rounds(reply, messages, unsteered_messages or messages, context)
        else:
            yield from self._per_token(reply, messages, context, spec.gate is not None)

    def _per_token(self, reply: "Reply", messages, context, gated: bool) -> Iterator[TokenEvent]:
        """The paper's schedule: one cloud forward (or round trip) per token, every live stream."""
        plan = self.arrangement.open(reply.prompts, messages, context, gated, reply.max_new, split=reply.split is not None)
        answer: list[int] = []  # the steered answer so far, in cloud token ids: what the user reads
        for step in range(reply.max_new):
            events = [reply.decide(s, step, plan.base(s), lambda: plan.delta(answer), plan.cloud_ms)[0]
                      for s in plan.live]
            yield from events
            going = [ev for ev in events if not ev.finish]
            if not going:
                return
            answer += [ev.token_id for ev in going if ev.stream == "steered"]
            plan.advance({ev.stream: ev.sent for ev in going})  # the cloud's rows: what it received

    # -- the loop's helpers ----------------------------------------------------------------
    def _cloud_prompts(self, messages, unsteered_messages, spec: DecodeSpec) -> dict[str, list[int]]:
        """The cloud-visible prompt of each stream, checked against the cloud's window (the device
        checks its own when it opens its rows). The context is not an argument: it is the device's alone."""
        for msgs in (messages, unsteered_messages):
            if not msgs or msgs[-1].get("role") != "user":
                raise ValueError("messages must end with a user message")
        tok = self.cloud.tokenizer
        prompts = {s: conversation_ids(tok, unsteered_messages if s == "unsteered" else messages) for s in spec.streams}
        check_fits("the cloud model's", max(len(p) for p in prompts.values()), self.cloud.context_limit,
                   spec.sampling.max_new_tokens)
        return prompts

    def piece(self, token_id: int) -> str:
        """A token id's text in the cloud's vocabulary (cached: the readouts show the top-5 each step)."""
        if token_id not in self._pieces:
            self._pieces[token_id] = self.cloud.tokenizer.decode([token_id])
        return self._pieces[token_id]

    def generate(self, messages, context: str = "", spec: DecodeSpec = DecodeSpec("side_by_side"),
                 transcript: CloudTranscript | None = None) -> dict:
        """Run `stream` to the end; return the texts per stream (and as shown: cut by the token limit,
        ending on a sentence, text.end_on_sentence), how many tokens steering changed
        and how many device passes the gate skipped (and, speculating, the drafts per stream)."""
        from costeer.engine.summary import ReplySummary

        summary = ReplySummary.of(self.stream(messages, context, spec, transcript))
        steered = summary["steered"]
        result = {"texts": summary.texts(), "shown": summary.shown(), "changed_tokens": steered.changed, "device_skipped": steered.device_skipped,
                  "steered_steps": steered.tokens, "effective_strength": effective_strength(spec.params)}
        if spec.speculative:
            result["speculation"] = {s: v.speculation.as_dict() for s, v in summary.streams.items()}
        return result


class Reply:
    """One reply being decided: the steering processor (defences inside), each stream's chooser and
    text, and the transcript of what the cloud received. `decide` is the one place a token is
    chosen and recorded; a schedule (the per-token loop, speculative.rounds) only says which
    positions to decide with which b, and when."""

    def __init__(self, engine: CoSteerEngine, prompts: dict[str, list[int]], spec: DecodeSpec,
                 transcript: CloudTranscript | None, context: str = ""):
        self.engine, self.prompts, self.spec, self.transcript = engine, prompts, spec, transcript
        sampling, defences = spec.sampling, spec.defences
        self.seed = resolve_seed(sampling)
        self.max_new = sampling.max_new_tokens
        self.steer = processor(spec.params, spec.gate, spec.reference, defences, self.seed)
        self.deny = torch.tensor(defences.deny_ids, dtype=torch.long) if defences and defences.deny_ids else None
        # the copy guard's table is built here, on the device, from the context the device holds
        self.guard = CopyGuard(engine.cloud.tokenizer, context, defences.copy_guard) \
            if defences and defences.copy_guard and context.strip() else None
        self.split = SplitTranscript(defences.private, self.deny, engine.eos_ids) if spec.private else None
        self.choose = {s: Chooser(sampling, self.seed, ids) for s, ids in prompts.items()}  # same seed: alike draws
        self.texts = {s: TextStream(engine.cloud.tokenizer, sampling.stop) for s in prompts}
        if transcript is not None:
            for s, ids in prompts.items():
                transcript.prompt_ids[s] = list(ids)
                transcript.prompt_text[s] = engine.cloud.tokenizer.decode(ids)
                transcript.token_ids[s], transcript.drafts[s] = [], []

    def decide(self, s: str, position: int, b_cloud: torch.Tensor, delta, cloud_ms: float = 0.0,
               device_ms: float = 0.0, draft: tuple[int, torch.Tensor | None] | None = None
               ) -> tuple[TokenEvent, bool]:
        """Stream `s`'s token at `position`, next to the paper's equation:
            b = log_softmax(b_cloud);  d = delta() (the device, when the gate wants it);
            p = steer(b, d) = log_softmax(b + C d) with the defences;  token ~ p,
        or, given a speculative `draft` (x, q), keep x or replace it (Chooser.verify). The token is
        recorded as sent to the cloud, or in Private mode the cloud's stand-in for it when it is
        kept back (steering/private.py). Returns the event and whether the draft was kept."""
        b = torch.log_softmax(b_cloud, dim=-1)
        steered = s == "steered"
        d, start = None, time.perf_counter()
        if steered and self.steer.wants_delta(b_cloud):
            d = delta()
            device_ms += (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        p = self.steer(b, d) if steered else b
        if steered and self.guard is not None:
            p = self.guarded(p, b, self.choose[s].ids[len(self.prompts[s]):])  # the chooser holds prompt + answer
        token, kept = (self.choose[s](p), False) if draft is None else self.choose[s].verify(p, *draft)
        ev = self._event(s, position, token, b, p, steered and d is None, cloud_ms, device_ms)
        ev.steer_ms = (time.perf_counter() - start) * 1000
        if self.deny is not None and steered:
            ev.deny_margin = deny_margin(p, b, self.deny)
        self._finish(ev, self.texts[s], last=position == self.max_new - 1)
        if steered and self.split is not None and (sent := self.split.sent(token, b)) != token:
            ev.sent_id = sent
        if self.transcript is not None:
            self.transcript.token_ids[s].append(ev.sent)
        return ev, kept

    def guarded(self, p: torch.Tensor, b: torch.Tensor, answer: list[int]) -> torch.Tensor:
        """p after the copy guard (no token completing a run of n context tokens); the deny-list's
        cap is applied again, since removing tokens renormalizes the rest."""
        p = self.guard(p, answer)
        return cap_at_base(p, b, self.deny) if self.deny is not None else p

    def _event(self, stream, step, token, b, p, skipped, cloud_ms, device_ms) -> TokenEvent:
        base_logprob = max(float(b[token]), LOGPROB_FLOOR)  # a token outside a remote top-k has -inf
        if stream == "unsteered":
            top = self._top(b)
            return TokenEvent(stream, step, token, "", False, top, top, 0.0, cloud_ms=cloud_ms,
                              base_logprob=base_logprob)
        changed = int(torch.argmax(p)) != int(torch.argmax(b))
        return TokenEvent(stream, step, token, "", changed, self._top(b), self._top(p), kl_divergence(p, b),
                          device_skipped=skipped, cloud_ms=cloud_ms, device_ms=device_ms, base_logprob=base_logprob)

    def _finish(self, ev: TokenEvent, text: TextStream, last: bool):
        if ev.token_id in self.engine.eos_ids:
            ev.finish, ev.text = "eos", text.flush()
            return
        ev.text, hit_stop = text.add(ev.token_id)
        if hit_stop:
            ev.finish = "stop"
        elif last:
            ev.finish = "length"
            ev.text += text.flush()

    def _top(self, logprobs: torch.Tensor) -> list[tuple[str, float]]:
        values, ids = torch.topk(logprobs, TOP_K_SHOWN)
        return [(self.engine.piece(int(i)), round(math.exp(float(v)), 4)) for v, i in zip(values, ids)]

    def rejected(self, s: str, drafts: list[int]):
        """Drafted tokens the cloud scored and the answer does not hold: sent all the same."""
        if self.transcript is not None:
            self.transcript.drafts[s].append(list(drafts))


def build_engine(cloud_lm: LoadedModel, device_lm: LoadedModel | None = None) -> CoSteerEngine:
    """One model -> the single-process demo; two -> a split engine (on their shared vocabulary
    when their tokenizers differ)."""
    if device_lm is None or device_lm is cloud_lm:
        return CoSteerEngine.one_model(cloud_lm)
    from costeer.engine.cloud import InProcessCloud

    return CoSteerEngine(InProcessCloud(cloud_lm), DeviceLM(device_lm, cloud_lm.tokenizer, cloud_lm.vocab_size))


__all__ = ["CoSteerEngine", "TokenEvent", "CloudTranscript", "Sampling", "ConfidenceGate", "Defences", "build_engine",
           "build_prompts", "system_with_context", "MODES", "DecodeSpec"]
