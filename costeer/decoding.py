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
    device_skipped: bool = False  # the confidence gate (or an incomplete character) skipped the device


@dataclass
class CloudTranscript:
    """Everything the cloud-role model received, per stream: the prompt's token ids (and their
    text, for display), then one chosen token id per step."""

    prompt_ids: dict[str, list[int]] = field(default_factory=dict)
    prompt_text: dict[str, str] = field(default_factory=dict)
    token_ids: dict[str, list[int]] = field(default_factory=dict)


def system_with_context(context: str, system: str = SYSTEM_PROMPT) -> str:
    """The system message a model sees when it is given the personal context directly."""
    return system + (f"\n\n{CONTEXT_HEADER}\n{context.strip()}" if context.strip() else "")


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
    with_ctx = system_with_context(context, system)

    def encode(sys_text):
        turns = [{"role": "system", "content": sys_text}] + rest
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            return tokenizer(text, add_special_tokens=False)["input_ids"]
        # a base model without a chat template: a plain transcript it can continue
        text = "".join(f"{t['role'].capitalize()}: {t['content']}\n\n" for t in turns) + "Assistant:"
        return tokenizer(text)["input_ids"]

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
        return self.extend([[t] for t in tokens])

    def extend(self, tokens: list[list[int]]) -> torch.Tensor:
        """Append n tokens to every row (the same n) in one forward; logits after the last."""
        ids = torch.tensor(tokens, device=self.mask.device)  # (B, n)
        n = ids.shape[1]
        self.mask = torch.cat([self.mask, torch.ones_like(ids)], dim=1)
        positions = self.next_pos + torch.arange(n, device=ids.device)  # (B, n)
        self.next_pos = self.next_pos + n
        self.logits = self._forward(ids, positions)
        return self.logits

    def crop(self, n: int):
        """Forget the last n tokens of every row (their logits are stale until the next extend)."""
        self.cache.crop(-n)  # a negative value removes that many tokens
        self.mask = self.mask[:, :-n]
        self.next_pos = self.next_pos - n

    def keep(self, rows: list[int]):
        """Drop finished rows so later steps do not pay for them."""
        idx = torch.tensor(rows, device=self.mask.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.next_pos, self.logits = self.mask[idx], self.next_pos[idx], self.logits[idx]


class _LazyRows:
    """Device rows that follow the steered answer only when their logits are needed.

    `logits_after(ids)` brings every row to `prompt + ids`: it feeds what is new in one forward,
    and when `ids` no longer extends what was fed (a re-tokenized answer changed an earlier
    token) it crops the KV cache back to the common prefix first. This keeps the device caches
    consistent after a gated stretch and across tokenizers."""

    def __init__(self, lm: LoadedModel, prompts: list[list[int]]):
        self.rows = _Rows(lm, prompts)
        self.prompt_logits = self.rows.logits
        self.fed: list[int] = []
        self.forwards = 1

    def logits_after(self, ids: list[int]) -> torch.Tensor:
        common = 0
        for a, b in zip(self.fed, ids):
            if a != b:
                break
            common += 1
        if common < len(self.fed):
            back = len(self.fed) - common
            if common == len(ids) and common > 0:
                back, common = back + 1, common - 1  # re-feed the last token to get fresh logits
            self.rows.crop(back)
            self.fed = self.fed[:common]
            if not ids:
                self.rows.logits = self.prompt_logits
        new = ids[len(self.fed):]
        if new:
            self.rows.extend([new] * self.rows.mask.shape[0])
            self.fed = list(ids)
            self.forwards += 1
        return self.rows.logits


@dataclass(frozen=True)
class ConfidenceGate:
    """Skip the device passes while the cloud is sure (the paper's adaptive variant).

    Once the cloud's top probability has been >= 1 - threshold for `patience` consecutive steps,
    steering uses d = 0 (the cloud's own distribution) and the device models do not run, until
    the cloud is unsure again; the device caches then catch up in one forward."""

    threshold: float = 0.1
    patience: int = 2

    def __post_init__(self):
        if not isinstance(self.threshold, (int, float)) or not math.isfinite(self.threshold) or not 0 < self.threshold < 1:
            raise ValueError(f"gate threshold must be in (0, 1), got {self.threshold!r}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or not 1 <= self.patience <= 100:
            raise ValueError(f"gate patience must be an integer in [1, 100], got {self.patience!r}")


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
        self.vocab_map = None
        if isinstance(cloud, LoadedModel) and self.local is not cloud and \
                cloud.tokenizer.get_vocab() != self.local.tokenizer.get_vocab():
            from .vocab_map import VocabMap

            self.vocab_map = VocabMap(cloud.tokenizer, self.local.tokenizer, cloud.vocab_size, self.local.vocab_size)
        tok = self.cloud.tokenizer  # answers are in cloud token ids
        eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        model = cloud.model if isinstance(cloud, LoadedModel) else self.local.model
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        self.eos_ids = frozenset(eos)

    def _cloud_rows(self, prompts):
        if isinstance(self.cloud, LoadedModel):
            return _Rows(self.cloud, prompts)
        from .cloud import RemoteRows

        return RemoteRows(self.cloud, prompts, self.local.vocab_size, self.local.device)

    @property
    def context_limit(self) -> int | None:
        """The smallest context window among the in-process models (a remote cloud checks its own)."""
        models = [m for m in (self.cloud, self.local) if isinstance(m, LoadedModel)]
        limits = [getattr(m.model.config, "max_position_embeddings", None) for m in models]
        return min((x for x in limits if x), default=None)

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
               unsteered_messages: list[dict] | None = None,
               gate: ConfidenceGate | None = None) -> Iterator[TokenEvent]:
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
        limit = self.context_limit
        longest = max(len(with_ctx), len(plain_unsteered)) if mode != "unsteered" else len(plain_unsteered)
        if limit and longest + sampling.max_new_tokens > limit:
            raise ValueError(f"conversation too long: {longest} prompt tokens + max_new_tokens "
                             f"{sampling.max_new_tokens} exceed the model's context of {limit} tokens; "
                             "start a new conversation or shorten the personal context")
        strength = effective_strength(params)
        streams = ["unsteered"] if mode == "unsteered" else ["steered"] if mode == "steered" else ["unsteered", "steered"]
        if transcript is not None:
            for s in streams:
                ids = plain_unsteered if s == "unsteered" else plain
                transcript.prompt_ids[s] = list(ids)
                transcript.prompt_text[s] = self.cloud.tokenizer.decode(ids)
                transcript.token_ids[s] = []

        # Row layout. Fast path: one model, no gate -> the with-context row rides in the cloud batch
        # and the llm row doubles as the device's without-context row. Otherwise the device rows
        # follow the answer lazily (gated stretches, another model, another tokenizer).
        shared = self.same_model and gate is None
        cloud_rows = [s if s == "unsteered" else "llm" for s in streams]
        device, device_rows = None, []
        if "steered" in streams:
            if shared:
                cloud_rows.append("slm_ctx")
            else:
                d_plain, d_ctx = (plain, with_ctx) if self.vocab_map is None else \
                    build_prompts(self.local.tokenizer, messages, context)
                device_rows = ["slm_ctx"] if self.same_model else ["slm", "slm_ctx"]
                device = _LazyRows(self.local, [d_plain if r == "slm" else d_ctx for r in device_rows])
        prompt_of = {"unsteered": plain_unsteered, "llm": plain, "slm_ctx": with_ctx}
        rows = self._cloud_rows([prompt_of[r] for r in cloud_rows])

        seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(7), "big")
        gens = {}
        for s in streams:  # one generator per stream, same seed: unsteered and steered draw alike
            gens[s] = torch.Generator().manual_seed(seed) if sampling.temperature > 0 else None
        texts = {s: _TextStream(self.cloud.tokenizer, sampling.stop) for s in streams}
        live = list(streams)
        steered_ids: list[int] = []  # the steered answer so far, in cloud token ids
        confident = 0  # consecutive steps with the cloud's top probability >= 1 - threshold

        for step in range(sampling.max_new_tokens):
            logits = {name: rows.logits[i] for i, name in enumerate(cloud_rows)}
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
                    if gate is not None:
                        confident = confident + 1 if float(b.max()) >= math.log1p(-gate.threshold) else 0
                    if shared:
                        d = torch.log_softmax(logits["slm_ctx"], dim=-1) - torch.log_softmax(logits["llm"], dim=-1)
                    elif gate is not None and confident >= gate.patience:
                        d = None  # gated: the device models do not run this step
                    else:
                        d = self._device_delta(device, device_rows, steered_ids, logits["llm"])
                    p = b if d is None else steer_from_logprobs(b, d, strength)
                    token = _choose(p, sampling, gens[s])
                    kl = float((p.exp() * (p - b)).sum())
                    changed = int(torch.argmax(p)) != int(torch.argmax(b))
                    events.append(TokenEvent(s, step, token, "", changed, self._top(b), self._top(p), max(kl, 0.0),
                                             device_skipped=d is None))
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
            if "steered" in chosen:
                steered_ids.append(chosen["steered"])

            # Feed the chosen tokens back; drop rows whose stream has finished.
            keep = [i for i, n in enumerate(cloud_rows) if (n if n == "unsteered" else "steered") in live]
            if len(keep) < len(cloud_rows):
                rows.keep(keep)
                cloud_rows = [cloud_rows[i] for i in keep]
            rows.step([chosen["unsteered" if n == "unsteered" else "steered"] for n in cloud_rows])

    def _device_delta(self, device: _LazyRows, names: list[str], steered_ids: list[int], llm_logits):
        """d = log p_SLM(.|context) - log p_SLM(.) at the answer's current end, in cloud vocabulary;
        None when the device cannot be in step (the answer ends inside a multi-byte character)."""
        if self.vocab_map is None:
            target = steered_ids
        else:  # the device re-tokenizes the answer's text with its own tokenizer
            text = self.cloud.tokenizer.decode(steered_ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                return None
            target = self.local.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        out = device.logits_after(target)
        with_ctx = out[names.index("slm_ctx")]
        without = llm_logits if "slm" not in names else out[names.index("slm")]
        d = torch.log_softmax(with_ctx, dim=-1) - torch.log_softmax(without, dim=-1)
        return d if self.vocab_map is None else self.vocab_map.to_cloud(d)

    def generate(self, messages, context="", mode="side_by_side", params=SteeringParams(),
                 sampling=Sampling(), transcript: CloudTranscript | None = None,
                 gate: ConfidenceGate | None = None) -> dict:
        """Run `stream` to the end; return the texts per stream, how many tokens steering changed
        and how many device passes the gate skipped."""
        out = {}
        changed = skipped = steps = 0
        for ev in self.stream(messages, context, mode, params, sampling, transcript, gate=gate):
            out[ev.stream] = out.get(ev.stream, "") + ev.text
            if ev.stream == "steered":
                changed += int(ev.changed)
                skipped += int(ev.device_skipped)
                steps += 1
        return {"texts": out, "changed_tokens": changed, "device_skipped": skipped, "steered_steps": steps,
                "effective_strength": effective_strength(params)}
