"""Choosing the next token from a distribution: greedy, or temperature + top-p with a seed, after
optional repetition control.

Repetition control follows transformers' `generate` definitions, on the ids the stream has seen
(its own cloud prompt, then its answer):
    repetition_penalty θ   (CTRL, Keskar et al. 2019) a seen token's score s becomes s·θ if s < 0,
                           else s/θ. Our scores are log-probabilities (≤ 0), so seen tokens get
                           θ times less likely in log space; 1 = off.
    no_repeat_ngram_size n a token that would complete an n-gram the stream already holds is
                           banned; 0 = off.
Both streams of a side-by-side answer get the same rules, so they still differ only by steering.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

MAX_NEW_TOKENS = 4096
MAX_PENALTY = 10.0
MAX_NGRAM = 20


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; temperature 0 means greedy. Checked once, at the edge."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or \
                not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens must be an integer in [1, {MAX_NEW_TOKENS}], got {self.max_new_tokens!r}")
        if not _number_in(self.temperature, 0, 5):
            raise ValueError(f"temperature must be in [0, 5] (0 = greedy), got {self.temperature!r}")
        if not _number_in(self.top_p, 0, 1) or self.top_p == 0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or
                                      not 0 <= self.seed < 2**63):
            raise ValueError(f"seed must be an integer in [0, 2^63) or None, got {self.seed!r}")
        if not _number_in(self.repetition_penalty, 1, MAX_PENALTY):
            raise ValueError(f"repetition_penalty must be in [1, {MAX_PENALTY:g}] (1 = off), got {self.repetition_penalty!r}")
        n = self.no_repeat_ngram_size
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_NGRAM:
            raise ValueError(f"no_repeat_ngram_size must be an integer in [0, {MAX_NGRAM}] (0 = off), got {n!r}")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed, "repetition_penalty": self.repetition_penalty,
                "no_repeat_ngram_size": self.no_repeat_ngram_size}


def _number_in(x, lo, hi) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x) and lo <= x <= hi


class Chooser:
    """Picks tokens for one stream and remembers what the stream has seen. The generator lives on
    the device of the distributions it samples from (a CPU generator cannot drive
    `torch.multinomial` on CUDA tensors); streams given the same seed draw alike, so unsteered
    and steered differ only by steering."""

    def __init__(self, sampling: Sampling, seed: int, prompt_ids: list[int] = ()):
        self.sampling, self.seed = sampling, seed
        self.generator: torch.Generator | None = None
        self.ids: list[int] = []
        self.seen: dict[int, None] = {}  # insertion-ordered set of seen ids
        self._seen_tensor: torch.Tensor | None = None
        self.followers: dict[tuple[int, ...], set[int]] = {}  # (n-1)-gram -> tokens that completed it
        for t in prompt_ids:
            self.remember(int(t))

    def fork(self) -> "Chooser":
        """A copy that can remember a draft without touching this stream's history (speculative.py:
        the draft gets the same repetition control as the verification)."""
        c = Chooser.__new__(Chooser)
        c.sampling, c.seed, c.generator, c._seen_tensor = self.sampling, self.seed, None, None
        c.ids, c.seen = list(self.ids), dict(self.seen)
        c.followers = {k: set(v) for k, v in self.followers.items()}
        return c

    def generator_for(self, device: torch.device) -> torch.Generator:
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        return self.generator

    def remember(self, token: int):
        self.ids.append(token)
        if token not in self.seen:
            self.seen[token] = None
            self._seen_tensor = None
        n = self.sampling.no_repeat_ngram_size
        if n and len(self.ids) >= n:
            self.followers.setdefault(tuple(self.ids[-n:-1]), set()).add(token)

    def controlled(self, logprobs: torch.Tensor) -> torch.Tensor:
        """The scores after repetition control (unchanged when it is off)."""
        s, n = self.sampling, self.sampling.no_repeat_ngram_size
        banned = self.followers.get(tuple(self.ids[-(n - 1):]) if n > 1 else (), ()) if n else ()
        if s.repetition_penalty == 1 and not banned:
            return logprobs
        out = logprobs.clone()
        if s.repetition_penalty != 1 and self.seen:
            if self._seen_tensor is None or self._seen_tensor.device != out.device:
                self._seen_tensor = torch.tensor(list(self.seen), device=out.device)
            seen = out[self._seen_tensor]
            out[self._seen_tensor] = torch.where(seen < 0, seen * s.repetition_penalty, seen / s.repetition_penalty)
        if banned:
            ban = torch.tensor(sorted(banned), device=out.device)
            if bool(torch.isfinite(out).sum() > torch.isfinite(out[ban]).sum()):  # never ban every candidate
                out[ban] = float("-inf")
        return out

    def probs(self, logprobs: torch.Tensor) -> torch.Tensor:
        """The distribution a sampled token is drawn from: repetition control, temperature, top-p."""
        return final_probs(self.controlled(logprobs), self.sampling)

    def __call__(self, logprobs: torch.Tensor) -> int:
        if self.sampling.greedy:
            token = int(torch.argmax(self.controlled(logprobs)))
        else:
            token = int(torch.multinomial(self.probs(logprobs), 1, generator=self.generator_for(logprobs.device)))
        self.remember(token)
        return token

    def verify(self, logprobs: torch.Tensor, draft: int, q: torch.Tensor | None) -> tuple[int, bool]:
        """Speculative decoding's acceptance step: keep the draft token or replace it, so that the
        token chosen has exactly the distribution `__call__` would draw from.
            greedy    keep the draft iff it is the argmax
            sampled   keep it with probability min(1, p(x)/q(x)), else draw from max(0, p - q)
                      normalized (Leviathan et al. 2023; Chen et al. 2023), where q is the
                      distribution the draft was drawn from."""
        if self.sampling.greedy:
            token = int(torch.argmax(self.controlled(logprobs)))
            self.remember(token)
            return token, token == draft
        p = self.probs(logprobs)
        gen = self.generator_for(p.device)
        px, qx = float(p[draft]), float(q[draft])
        if qx > 0 and float(torch.rand((), generator=gen, device=p.device)) * qx < px:
            token, kept = draft, True
        else:
            residual = (p - q).clamp(min=0)
            if float(residual.sum()) <= 0:  # p <= q everywhere: only when p == q, where a rejection cannot happen
                residual = p
            token, kept = int(torch.multinomial(residual, 1, generator=gen)), False
        self.remember(token)
        return token, kept


def final_probs(scores: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """softmax(scores / temperature), cut to the top-p nucleus (which always keeps the top token)."""
    probs = torch.softmax(scores / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        probs = probs / probs.sum()  # normalized: the speculative acceptance ratio p/q needs it
    return probs


def resolve_seed(sampling: Sampling) -> int:
    return sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(7), "big")
