"""Sequences through one in-process model: one batched forward per step, one KV cache.

The `Rows` contract (shared with the HTTP cloud's rows in cloud.py):
    .logprobs  (B, V) float32 next-token log-probabilities of each row. Exact in process; over
               HTTP only the cloud's top-k are known and the rest are -inf (not renormalized,
               so their total mass says how much the cloud told us).
    .step(tokens)   append one token to every row
    .keep(rows)     drop finished rows so later steps do not pay for them
`extend` appends n tokens to every row in one forward (the device's catch-up, and later the
cloud's scoring of a speculative draft).
"""
from __future__ import annotations

import torch

from costeer.models.load import LoadedModel


class ModelRows:
    """Left-padded rows with an attention mask and explicit positions, so a row in the batch
    decodes exactly as it would alone."""

    def __init__(self, lm: LoadedModel, prompts: list[list[int]]):
        from transformers import DynamicCache

        if not prompts or any(not p for p in prompts):
            raise ValueError("every row needs a non-empty prompt")
        self.model = lm.model
        device = lm.device
        pad = lm.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        self.mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)  # (B, L): left padding keeps positions from 0
        self.cache = DynamicCache(config=self.model.config)
        self.next_pos = positions[:, -1:] + 1  # (B, 1)
        self.logprobs = self._forward(ids, positions)

    @torch.inference_mode()
    def _forward(self, ids, positions, keep: int = 1):
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions,
                         past_key_values=self.cache, use_cache=True, logits_to_keep=keep)
        logprobs = torch.log_softmax(out.logits[:, -keep:, :].float(), dim=-1)  # (B, keep, V)
        self.along = logprobs
        return logprobs[:, -1, :]  # (B, V)

    @property
    def size(self) -> int:
        return self.mask.shape[0]

    def step(self, tokens: list[int]) -> torch.Tensor:
        return self.extend([[t] for t in tokens])

    def extend(self, tokens: list[list[int]], along: bool = False) -> torch.Tensor:
        """Append n tokens to every row (the same n) in one forward; log-probs after the last, or
        with `along` after each of the n (B, n, V): the cloud's scoring of a draft."""
        ids = torch.tensor(tokens, device=self.mask.device)  # (B, n)
        n = ids.shape[1]
        self.mask = torch.cat([self.mask, torch.ones_like(ids)], dim=1)
        positions = self.next_pos + torch.arange(n, device=ids.device)  # (B, n)
        self.next_pos = self.next_pos + n
        self.logprobs = self._forward(ids, positions, n if along else 1)
        return self.along if along else self.logprobs

    def crop(self, n: int):
        """Forget the last n tokens of every row (log-probs are stale until the next extend).
        Raises RuntimeError on a sliding-window cache that has filled its window."""
        self.cache.crop(-n)  # a negative value removes that many tokens
        self.mask = self.mask[:, :-n]
        self.next_pos = self.next_pos - n

    def keep(self, rows: list[int]):
        idx = torch.tensor(rows, device=self.mask.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.next_pos, self.logprobs = self.mask[idx], self.next_pos[idx], self.logprobs[idx]


class LazyRows:
    """Rows that follow a target sequence only when their log-probs are asked for.

    `logprobs_after(ids)` brings every row to `prompt + ids`: it feeds what is new in one forward,
    and when `ids` no longer extends what was fed (a re-tokenized answer changed an earlier token)
    it crops the KV cache back to the common prefix first. A sliding-window cache that can no
    longer be cropped (Gemma 3 once a layer has filled its window) is rebuilt from the prompts:
    one prefill, the same result."""

    def __init__(self, lm: LoadedModel, prompts: list[list[int]]):
        self.lm, self.prompts = lm, [list(p) for p in prompts]
        self.rows = ModelRows(lm, self.prompts)
        self.prompt_logprobs = self.rows.logprobs
        self.fed: list[int] = []
        self.forwards = 1

    def logprobs_after(self, ids: list[int]) -> torch.Tensor:
        common = 0
        for a, b in zip(self.fed, ids):
            if a != b:
                break
            common += 1
        if common < len(self.fed):
            back = len(self.fed) - common
            if common == len(ids) and common > 0:
                back, common = back + 1, common - 1  # re-feed the last token to get fresh log-probs
            try:
                self.rows.crop(back)
            except RuntimeError:  # sliding window filled: start again from the prompts
                self.rows = ModelRows(self.lm, [p + ids[:common] for p in self.prompts]) if common else \
                    ModelRows(self.lm, self.prompts)
                self.forwards += 1
            self.fed = self.fed[:common]
            if not ids:
                self.rows.logprobs = self.prompt_logprobs
        new = ids[len(self.fed):]
        if new:
            self.rows.extend([new] * self.rows.size)
            self.fed = list(ids)
            self.forwards += 1
        return self.rows.logprobs


class TrailRow:
    """One sequence that follows a changing target, for scoring drafts: `along(ids, n)` gives the
    next-token log-probs after each of the last n prefixes of `prompt + ids` (n, V). The KV cache
    keeps what the new target shares with the old one and is cropped back for the rest, so a
    rejected draft costs no prefill."""

    def __init__(self, lm: LoadedModel, prompt: list[int]):
        self.lm, self.prompt = lm, list(prompt)
        self.rows = ModelRows(lm, [self.prompt])
        self.first = self.rows.logprobs[0]  # after the prompt alone
        self.fed: list[int] = []

    def along(self, ids: list[int], n: int) -> torch.Tensor:
        need = len(ids) - n + 1  # the shortest prefix (of ids) whose next distribution is wanted
        if not 1 <= n <= len(ids) + 1:
            raise ValueError(f"n must be in [1, {len(ids) + 1}], got {n}")
        common = 0
        for a, b in zip(self.fed, ids):
            if a != b:
                break
            common += 1
        keep = max(0, min(common, need - 1))  # every wanted position is recomputed, none is read back
        if keep < len(self.fed):
            try:
                self.rows.crop(len(self.fed) - keep)
            except RuntimeError:  # a sliding-window cache that filled its window: start again
                self.rows = ModelRows(self.lm, [self.prompt + ids[:keep]]) if keep else ModelRows(self.lm, [self.prompt])
            self.fed = self.fed[:keep]
        new = ids[keep:]
        out = []
        if need == 0:
            out.append(self.first[None])
        if new:
            scored = self.rows.extend([new], along=True)[0]  # after ids[:keep+1], ..., after ids
            out.append(scored[max(0, need - keep - 1):])
            self.fed = list(ids)
        return torch.cat(out)
