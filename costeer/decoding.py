"""The token loop: unsteered, steered and side-by-side decoding with shared, batched work.

Streams and rows. A *stream* is an answer the user sees ("unsteered" or "steered"). A *row*
is one sequence in a model's batch:
    unsteered  LLM(conversation)                     -> the unsteered answer
    llm        LLM(conversation + steered tokens)     -> base distribution b of the steered answer
    slm        SLM(conversation + steered tokens)     -> device model without context
    slm_ctx    SLM(context + conversation + steered)  -> device model with context
When cloud and device are the same model, `llm` and `slm` are the same computation and share
one row. All rows of one model advance in one batched forward per token (left padding,
attention mask, explicit positions), each keeping its KV cache; finished rows are dropped.

The personal context reaches the device model as a system message (see `build_prompts`):
only the `slm_ctx` row ever sees it. `CloudTranscript` records every token id that went
into a cloud-role row, which is how the UI shows what crossed to the cloud.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterator

import torch

from .models import LoadedModel
from .policy import SteeringParams, effective_strength, steer_from_logprobs

MODES = ("unsteered", "steered", "side_by_side")
SYSTEM_PROMPT = "You are a helpful assistant."
CONTEXT_HEADER = "What you know about the user (private, stays on the user's device):"
TOP_K_SHOWN = 5


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; temperature 0 means greedy. Checked once, at the edge."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= 4096:
            raise ValueError(f"max_new_tokens must be an integer in [1, 4096], got {self.max_new_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) or not 0 <= self.temperature <= 5:
            raise ValueError(f"temperature must be in [0, 5] (0 = greedy), got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise ValueError(f"seed must be an integer in [0, 2^63) or None, got {self.seed!r}")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))


@dataclass
class TokenEvent:
    """One emitted token of one stream; the CLI prints these, the UI highlights them."""

    stream: str
    step: int
    token_id: int
    text: str  # the text this token adds (may be "" while a multi-byte character is incomplete)
    changed: bool  # steering moved the top choice away from the base distribution's argmax
    top_base: list[tuple[str, float]]
    top_steered: list[tuple[str, float]]
    kl: float  # KL(steered || base) in nats; 0 for the unsteered stream
    finish: str | None = None  # "eos", "stop" or "length" on a stream's last event


@dataclass
class CloudTranscript:
    """Everything the cloud-role model received, per stream: the prompt's token ids (and their
    text, for display), then one chosen token id per step."""

    prompt_ids: dict[str, list[int]] = field(default_factory=dict)
    prompt_text: dict[str, str] = field(default_factory=dict)
    token_ids: dict[str, list[int]] = field(default_factory=dict)


def build_prompts(tokenizer, messages: list[dict], context: str) -> tuple[list[int], list[int]]:
    """Token ids of the conversation without and with the personal context.

    The context goes into the system message of the device's with-context row only. Both rows
    carry the same system prompt otherwise, so the delta isolates what the context adds.
    """
    system = SYSTEM_PROMPT
    rest = []
    for m in messages:
        if m["role"] == "system":
            system = m["content"]
        else:
            rest.append({"role": m["role"], "content": m["content"]})
    with_ctx = system + (f"\n\n{CONTEXT_HEADER}\n{context.strip()}" if context.strip() else "")

    def encode(sys_text):
        text = tokenizer.apply_chat_template([{"role": "system", "content": sys_text}] + rest, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    return encode(system), encode(with_ctx)


class _Rows:
    """Several sequences through one model: one batched forward per step, one KV cache."""

    def __init__(self, lm: LoadedModel, prompts: list[list[int]]):
        from transformers import DynamicCache

        self.model = lm.model
        device = lm.device
        pad = lm.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        self.mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)  # (B, L): left padding keeps positions from 0
        self.cache = DynamicCache(config=self.model.config)
        self.next_pos = positions[:, -1:] + 1  # (B, 1)
        self.logits = self._forward(ids, positions)

    @torch.inference_mode()
    def _forward(self, ids, positions):
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions,
                         past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float()  # (B, V)

    def step(self, tokens: list[int]) -> torch.Tensor:
        ids = torch.tensor(tokens, device=self.mask.device)[:, None]
        self.mask = torch.cat([self.mask, torch.ones_like(ids)], dim=1)
        positions = self.next_pos
        self.next_pos = self.next_pos + 1
        self.logits = self._forward(ids, positions)
        return self.logits

    def keep(self, rows: list[int]):
        """Drop finished rows so later steps do not pay for them."""
        idx = torch.tensor(rows, device=self.mask.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.next_pos, self.logits = self.mask[idx], self.next_pos[idx], self.logits[idx]


class _TextStream:
    """Incremental detokenization and stop handling for one answer."""

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.text = ""  # text emitted so far

    def add(self, token_id: int) -> tuple[str, bool]:
        """Append a token; return (new text, hit a stop string)."""
        self.ids.append(token_id)
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if full.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next byte
            return "", False
        for s in self.stop:
            at = full.find(s, max(0, len(self.text) - len(s)))
            if at != -1:
                new = full[len(self.text):at] if at >= len(self.text) else ""
                self.text += new
                return new, True
        new = full[len(self.text):]
        self.text = full
        return new, False


def _choose(logprobs: torch.Tensor, sampling: Sampling, gen: torch.Generator | None) -> int:
    if sampling.temperature == 0:
        return int(torch.argmax(logprobs))
    probs = torch.softmax(logprobs / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < sampling.top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


class CoSteerEngine:
    """Streams CoSteer decoding for one conversation; holds no per-conversation state."""

    def __init__(self, cloud, local: LoadedModel | None = None):
        """`cloud` is a LoadedModel (in process) or a RemoteCloud (over HTTP; then `local` is required)."""
        self.cloud = cloud
        self.local = local or cloud
        self._piece_cache: dict[int, str] = {}
        tok = self.local.tokenizer
        eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        gen_eos = getattr(self.local.model.generation_config, "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        self.eos_ids = frozenset(eos)

    def _cloud_rows(self, prompts):
        if isinstance(self.cloud, LoadedModel):
            return _Rows(self.cloud, prompts)
        from .cloud import RemoteRows

        return RemoteRows(self.cloud, prompts, self.local.vocab_size)

    @property
    def same_model(self) -> bool:
        """True when one model plays both roles (the bundled default)."""
        return self.local is self.cloud

    def _piece(self, token_id: int) -> str:
        if token_id not in self._piece_cache:
            self._piece_cache[token_id] = self.cloud.tokenizer.decode([token_id])
        return self._piece_cache[token_id]

    def _top(self, logprobs: torch.Tensor) -> list[tuple[str, float]]:
        values, ids = torch.topk(logprobs, TOP_K_SHOWN)
        return [(self._piece(int(i)), round(math.exp(float(v)), 4)) for v, i in zip(values, ids)]

    def stream(self, messages: list[dict], context: str = "", mode: str = "steered",
               params: SteeringParams = SteeringParams(), sampling: Sampling = Sampling(),
               transcript: CloudTranscript | None = None,
               unsteered_messages: list[dict] | None = None) -> Iterator[TokenEvent]:
        """Yield TokenEvents until every stream of `mode` has finished.

        `unsteered_messages` lets the unsteered stream continue its own conversation in a
        multi-turn side-by-side chat (default: the same messages).
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        unsteered_messages = unsteered_messages or messages
        for msgs in (messages, unsteered_messages):
            if not msgs or msgs[-1].get("role") != "user":
                raise ValueError("messages must end with a user message")
        plain, with_ctx = build_prompts(self.cloud.tokenizer, messages, context)
        plain_unsteered = plain if unsteered_messages is messages else build_prompts(self.cloud.tokenizer, unsteered_messages, "")[0]
        strength = effective_strength(params)
        streams = ["unsteered"] if mode == "unsteered" else ["steered"] if mode == "steered" else ["unsteered", "steered"]
        if transcript is not None:
            for s in streams:
                ids = plain_unsteered if s == "unsteered" else plain
                transcript.prompt_ids[s] = list(ids)
                transcript.prompt_text[s] = self.cloud.tokenizer.decode(ids)
                transcript.token_ids[s] = []

        # Row layout: row names per model, in batch order.
        cloud_rows = [s if s == "unsteered" else "llm" for s in streams]
        if "steered" in streams:
            if self.same_model:
                cloud_rows.append("slm_ctx")  # llm row doubles as slm row
            device_rows = [] if self.same_model else ["slm", "slm_ctx"]
        else:
            device_rows = []
        prompt_of = {"unsteered": plain_unsteered, "llm": plain, "slm": plain, "slm_ctx": with_ctx}
        runners = [(self.cloud, cloud_rows, self._cloud_rows([prompt_of[r] for r in cloud_rows]))]
        if device_rows:
            runners.append((self.local, device_rows, _Rows(self.local, [prompt_of[r] for r in device_rows])))

        seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(7), "big")
        gens = {}
        for s in streams:  # one generator per stream, same seed: unsteered and steered draw alike
            gens[s] = torch.Generator().manual_seed(seed) if sampling.temperature > 0 else None
        texts = {s: _TextStream(self.cloud.tokenizer, sampling.stop) for s in streams}
        live = list(streams)

        for step in range(sampling.max_new_tokens):
            logits = {}
            for _, names, rows in runners:
                for i, name in enumerate(names):
                    logits[name] = rows.logits[i]
            chosen = {}
            events = []
            for s in live:
                if s == "unsteered":
                    b = torch.log_softmax(logits["unsteered"], dim=-1)
                    token = _choose(b, sampling, gens[s])
                    top = self._top(b)
                    events.append(TokenEvent(s, step, token, "", False, top, top, 0.0))
                else:
                    b = torch.log_softmax(logits["llm"], dim=-1)
                    slm = logits["llm"] if self.same_model else logits["slm"]
                    d = torch.log_softmax(logits["slm_ctx"], dim=-1) - torch.log_softmax(slm, dim=-1)
                    p = steer_from_logprobs(b, d, strength)
                    token = _choose(p, sampling, gens[s])
                    kl = float((p.exp() * (p - b)).sum())
                    changed = int(torch.argmax(p)) != int(torch.argmax(b))
                    events.append(TokenEvent(s, step, token, "", changed, self._top(b), self._top(p), max(kl, 0.0)))
                chosen[s] = token

            for ev in events:
                s = ev.stream
                if transcript is not None:
                    transcript.token_ids[s].append(ev.token_id)
                if ev.token_id in self.eos_ids:
                    ev.finish = "eos"
                else:
                    ev.text, hit_stop = texts[s].add(ev.token_id)
                    if hit_stop:
                        ev.finish = "stop"
                    elif step == sampling.max_new_tokens - 1:
                        ev.finish = "length"
                yield ev
            finished = {ev.stream for ev in events if ev.finish}
            live = [s for s in live if s not in finished]
            if not live:
                return

            # Feed the chosen tokens back; drop rows whose stream has finished.
            for k, (lm, names, rows) in enumerate(runners):
                keep = [i for i, n in enumerate(names) if (n if n == "unsteered" else "steered") in live]
                if len(keep) < len(names):
                    if not keep:
                        runners[k] = None
                        continue
                    rows.keep(keep)
                    names[:] = [names[i] for i in keep]
                rows.step([chosen["unsteered" if n == "unsteered" else "steered"] for n in names])
            runners = [r for r in runners if r is not None]

    def generate(self, messages, context="", mode="side_by_side", params=SteeringParams(),
                 sampling=Sampling(), transcript: CloudTranscript | None = None) -> dict:
        """Run `stream` to the end; return the texts per stream and how many tokens steering changed."""
        out = {}
        changed = {}
        for ev in self.stream(messages, context, mode, params, sampling, transcript):
            out[ev.stream] = out.get(ev.stream, "") + ev.text
            changed[ev.stream] = changed.get(ev.stream, 0) + int(ev.changed)
        return {"texts": out, "changed_tokens": changed.get("steered", 0),
                "effective_strength": effective_strength(params)}
