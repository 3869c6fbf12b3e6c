"""Choosing the next token from a distribution: greedy, or temperature + top-p with a seed."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

MAX_NEW_TOKENS = 4096


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; temperature 0 means greedy. Checked once, at the edge."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or \
                not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens must be an integer in [1, {MAX_NEW_TOKENS}], got {self.max_new_tokens!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or \
                not math.isfinite(self.temperature) or not 0 <= self.temperature <= 5:
            raise ValueError(f"temperature must be in [0, 5] (0 = greedy), got {self.temperature!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or \
                not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or
                                      not 0 <= self.seed < 2**63):
            raise ValueError(f"seed must be an integer in [0, 2^63) or None, got {self.seed!r}")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Chooser:
    """Picks tokens for one stream. The generator lives on the device of the distributions it
    samples from (a CPU generator cannot drive `torch.multinomial` on CUDA tensors); streams
    given the same seed draw alike, so unsteered and steered differ only by steering."""

    def __init__(self, sampling: Sampling, seed: int):
        self.sampling, self.seed = sampling, seed
        self.generator: torch.Generator | None = None

    def generator_for(self, device: torch.device) -> torch.Generator:
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        return self.generator

    def __call__(self, logprobs: torch.Tensor) -> int:
        s = self.sampling
        if s.greedy:
            return int(torch.argmax(logprobs))
        probs = torch.softmax(logprobs / s.temperature, dim=-1)
        if s.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < s.top_p  # always keeps the top token
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs, 1, generator=self.generator_for(probs.device)))


def resolve_seed(sampling: Sampling) -> int:
    return sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(7), "big")
