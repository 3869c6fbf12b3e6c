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
from typing import Iterator

import torch

from .arrangements import OneModel, Split
from .cloud import CloudLM
from .defences import Defences, deny_margin
from .device import DeviceLM
from .models import LoadedModel
from .policy import SteeringParams, effective_strength
from .prompts import build_prompts, check_fits, conversation_ids, system_with_context  # noqa: F401  (re-exported)
from .sampling import Chooser, Sampling, resolve_seed
from .steering import ConfidenceGate, kl_divergence, processor  # noqa: F401
from .text import TextStream

MODES = ("unsteered", "steered", "side_by_side")
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
    drafted: bool = False  # speculation: this token is the device's draft, kept by the verification
    rejected_drafts: int = 0  # speculation: drafted tokens the cloud saw this round and were not kept
    outside_top_k: bool = False  # speculation: the rejected draft token was outside the cloud's top-k
    round: int = -1  # speculation: the cloud round trip that scored this token (-1: the per-token loop)
    drafts_sent: int = 0  # speculation: on a stream's first event of a round, how many drafts it sent


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

    def stream(self, messages: list[dict], context: str = "", mode: str = "steered",
               params: SteeringParams = SteeringParams(), sampling: Sampling = Sampling(),
               transcript: CloudTranscript | None = None, unsteered_messages: list[dict] | None = None,
               gate: ConfidenceGate | None = None, reference: bool = False,
               defences: Defences | None = None, speculate: int = 1, overlap: bool = False) -> Iterator[TokenEvent]:
        """Yield TokenEvents until every stream of `mode` has finished. `unsteered_messages` lets
        the unsteered stream continue its own conversation in a multi-turn side-by-side chat;
        `reference` steers with the paper's explicit T-step loop instead of the closed form;
        `defences` (the deny-list, noise) act on d on the device, before it steers;
        `speculate` K > 1 lets the device draft so that one cloud round trip yields up to K tokens,
        and `overlap` runs the device's passes while the request is in flight (speculative.py)."""
        prompts = self._cloud_prompts(messages, unsteered_messages or messages, context, mode, sampling)
        from . import speculative

        if speculative.check_speculate(speculate) > 1 or overlap:

            yield from speculative.stream(self, prompts, messages, unsteered_messages or messages, context, params,
                                          sampling, transcript, gate, reference, defences, speculate)
            return
        plan = self.arrangement.open(prompts, messages, context, gate is not None, sampling.max_new_tokens)
        seed = resolve_seed(sampling)
        steer = processor(params, gate, reference, defences, seed)
        deny = torch.tensor(defences.deny_ids, dtype=torch.long) if defences and defences.deny_ids else None
        choose = {s: Chooser(sampling, seed, ids) for s, ids in prompts.items()}  # same seed: the streams draw alike
        texts = {s: TextStream(self.cloud.tokenizer, sampling.stop) for s in prompts}
        self._record(transcript, prompts)
        answer: list[int] = []  # the steered answer so far, in cloud token ids
        for step in range(sampling.max_new_tokens):
            events = []
            for s in plan.live:
                b_cloud = plan.base(s)  # what the cloud said: exact, or its top-k and -inf elsewhere
                b = torch.log_softmax(b_cloud, dim=-1)
                d, start = None, time.perf_counter()
                if s == "steered" and steer.wants_delta(b_cloud):
                    d = plan.delta(answer)
                device_ms = (time.perf_counter() - start) * 1000 if d is not None else 0.0
                start = time.perf_counter()
                p = steer(b, d) if s == "steered" else b
                token = choose[s](p)
                ev = self._event(s, step, token, b, p, s == "steered" and d is None, plan.cloud_ms, device_ms)
                ev.steer_ms = (time.perf_counter() - start) * 1000
                if deny is not None and s == "steered":
                    ev.deny_margin = deny_margin(p, b, deny)
                events.append(ev)
            for ev in events:
                self._finish(ev, texts[ev.stream], last=step == sampling.max_new_tokens - 1)
                if transcript is not None:
                    transcript.token_ids[ev.stream].append(ev.token_id)
                yield ev
            chosen = {ev.stream: ev.token_id for ev in events if not ev.finish}
            if not chosen:
                return
            if "steered" in chosen:
                answer.append(chosen["steered"])
            plan.advance(chosen)

    # -- the loop's helpers ----------------------------------------------------------------
    def _cloud_prompts(self, messages, unsteered_messages, context, mode, sampling) -> dict[str, list[int]]:
        """The cloud-visible prompt of each stream, checked against the cloud's window (the device
        checks its own when it opens its rows)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        for msgs in (messages, unsteered_messages):
            if not msgs or msgs[-1].get("role") != "user":
                raise ValueError("messages must end with a user message")
        streams = ["unsteered", "steered"] if mode == "side_by_side" else [mode]
        tok = self.cloud.tokenizer
        prompts = {s: conversation_ids(tok, unsteered_messages if s == "unsteered" else messages) for s in streams}
        check_fits("the cloud model's", max(len(p) for p in prompts.values()), self.cloud.context_limit,
                   sampling.max_new_tokens)
        return prompts

    def _record(self, transcript: CloudTranscript | None, prompts: dict[str, list[int]]):
        if transcript is not None:
            for s, ids in prompts.items():
                transcript.prompt_ids[s] = list(ids)
                transcript.prompt_text[s] = self.cloud.tokenizer.decode(ids)
                transcript.token_ids[s] = []
                transcript.drafts[s] = []

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
        if ev.token_id in self.cloud.eos_ids:
            ev.finish, ev.text = "eos", text.flush()
            return
        ev.text, hit_stop = text.add(ev.token_id)
        if hit_stop:
            ev.finish = "stop"
        elif last:
            ev.finish = "length"
            ev.text += text.flush()

    def _piece(self, token_id: int) -> str:
        if token_id not in self._pieces:
            self._pieces[token_id] = self.cloud.tokenizer.decode([token_id])
        return self._pieces[token_id]

    def _top(self, logprobs: torch.Tensor) -> list[tuple[str, float]]:
        values, ids = torch.topk(logprobs, TOP_K_SHOWN)
        return [(self._piece(int(i)), round(math.exp(float(v)), 4)) for v, i in zip(values, ids)]

    def generate(self, messages, context="", mode="side_by_side", params=SteeringParams(),
                 sampling=Sampling(), transcript: CloudTranscript | None = None,
                 gate: ConfidenceGate | None = None, defences: Defences | None = None, speculate: int = 1,
                 overlap: bool = False) -> dict:
        """Run `stream` to the end; return the texts per stream, how many tokens steering changed
        and how many device passes the gate skipped (and, speculating, the drafts per stream)."""
        from .speculative import Speculation

        out, spec = {}, {}
        changed = skipped = steps = 0
        for ev in self.stream(messages, context, mode, params, sampling, transcript, gate=gate, defences=defences,
                              speculate=speculate, overlap=overlap):
            spec.setdefault(ev.stream, Speculation()).add(ev)
            out[ev.stream] = out.get(ev.stream, "") + ev.text
            if ev.stream == "steered":
                changed += int(ev.changed)
                skipped += int(ev.device_skipped)
                steps += 1
        result = {"texts": out, "changed_tokens": changed, "device_skipped": skipped, "steered_steps": steps,
                  "effective_strength": effective_strength(params)}
        if speculate != 1 or overlap:
            result["speculation"] = {s: v.as_dict() for s, v in spec.items()}
        return result


def build_engine(cloud_lm: LoadedModel, device_lm: LoadedModel | None = None) -> CoSteerEngine:
    """One model -> the single-process demo; two -> a split engine (on their shared vocabulary
    when their tokenizers differ)."""
    if device_lm is None or device_lm is cloud_lm:
        return CoSteerEngine.one_model(cloud_lm)
    from .cloud import InProcessCloud

    return CoSteerEngine(InProcessCloud(cloud_lm), DeviceLM(device_lm, cloud_lm.tokenizer, cloud_lm.vocab_size))


__all__ = ["CoSteerEngine", "TokenEvent", "CloudTranscript", "Sampling", "ConfidenceGate", "Defences", "build_engine",
           "build_prompts", "system_with_context", "MODES"]
