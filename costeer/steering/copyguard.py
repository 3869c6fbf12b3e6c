"""The copy guard: no steered token completes a run of n consecutive tokens of the context.

A small device model given a personal context tends to copy it, tags and all, and the delta
then makes the cloud copy it too: every copied token is a piece of the history sent to the
cloud word for word. transformers' `no_repeat_ngram_size` stops an answer repeating its own
n-grams; this stops it repeating the context's. The table holds every n-gram of the context as
the cloud's tokenizer splits it (the whole text, and each line on its own, since a line can start
a copy), and a token that would complete one is banned before the choice. So no n consecutive
chosen tokens (or drafted ones: speculative.py applies it to drafts too) ever equal n consecutive
context tokens. Runs shorter than n, and the same words under another split, still pass.

It runs on the device, beside the steering processor; the cloud never sees the table.
"""
from __future__ import annotations

import math

import torch

MIN_RUN, MAX_RUN = 2, 32


class CopyGuard:
    def __init__(self, tokenizer, context: str, n: int):
        if isinstance(n, bool) or not isinstance(n, int) or not MIN_RUN <= n <= MAX_RUN:
            raise ValueError(f"copy guard must be an integer in [{MIN_RUN}, {MAX_RUN}] tokens (or off), got {n!r}")
        self.n = n
        self.followers: dict[tuple[int, ...], set[int]] = {}
        pieces = [context] + [line for line in context.splitlines() if line.strip()]
        for piece in pieces:
            ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
            for i in range(len(ids) - n + 1):
                self.followers.setdefault(tuple(ids[i:i + n - 1]), set()).add(ids[i + n - 1])

    def banned(self, answer: list[int]) -> list[int]:
        """The tokens that would complete a context n-gram after `answer` (the stream's tokens so far)."""
        if len(answer) < self.n - 1:
            return []
        return sorted(self.followers.get(tuple(answer[len(answer) - self.n + 1:]), ()))

    def __call__(self, logprobs: torch.Tensor, answer: list[int]) -> torch.Tensor:
        """`logprobs` with the banned tokens removed and the rest renormalized (unchanged when
        nothing is banned; never every candidate)."""
        ban = self.banned(answer)
        if not ban:
            return logprobs
        ids = torch.tensor(ban, device=logprobs.device)
        if not bool(torch.isfinite(logprobs).sum() > torch.isfinite(logprobs[ids]).sum()):
            return logprobs
        out = logprobs.clone()
        out[ids] = -math.inf
        return torch.log_softmax(out, dim=-1)

