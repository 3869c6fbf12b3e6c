"""The device side: the only place the personal context enters.

`DeviceLM.open(messages, context)` is the one API that takes the context. It builds the device's
two prompts (without and with the context), keeps their rows lazily in step with the steered
answer, and gives back the delta d = log p_SLM(.|context) - log p_SLM(.) in the cloud's
vocabulary. With another tokenizer than the cloud's, the device re-tokenizes the answer's text
and moves d onto the shared tokens (vocab_map.py).
"""
from __future__ import annotations

import torch

from costeer.engine.prompts import build_prompts, check_fits
from costeer.engine.rows import LazyRows
from costeer.models.load import LoadedModel


class DeviceLM:
    def __init__(self, lm: LoadedModel, cloud_tokenizer=None, cloud_vocab: int | None = None):
        self.lm, self.name, self.tokenizer = lm, lm.name, lm.tokenizer
        self.context_limit = lm.context_limit
        self.cloud_tokenizer = cloud_tokenizer or lm.tokenizer
        self.vocab_map = None
        if cloud_tokenizer is not None and cloud_tokenizer is not lm.tokenizer and \
                cloud_tokenizer.get_vocab() != lm.tokenizer.get_vocab():
            from costeer.engine.vocab_map import VocabMap

            self.vocab_map = VocabMap(cloud_tokenizer, lm.tokenizer, cloud_vocab, lm.vocab_size)

    def open(self, messages: list[dict], context: str, max_new_tokens: int) -> "DeviceRows":
        """The device's rows for one answer; refused in words when they do not fit its window."""
        prompts = build_prompts(self.tokenizer, messages, context)
        check_fits("the device model's", max(len(p) for p in prompts), self.context_limit, max_new_tokens)
        return DeviceRows(self, LazyRows(self.lm, list(prompts)))

    def open_base(self, messages: list[dict], max_new_tokens: int) -> LazyRows:
        """One row without any context, following another stream's answer: the device's stand-in
        for the cloud when it drafts the unsteered stream (speculative.py)."""
        prompt = build_prompts(self.tokenizer, messages, "")[0]
        check_fits("the device model's", len(prompt), self.context_limit, max_new_tokens)
        return LazyRows(self.lm, [prompt])


class DeviceRows:
    """The device's two rows for one answer (0: without context, 1: with)."""

    def __init__(self, device: DeviceLM, rows: LazyRows):
        self.device, self.rows = device, rows

    @property
    def forwards(self) -> int:
        return self.rows.forwards

    def pair(self, answer_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p_SLM(.), d) after the answer so far; same tokenizer as the cloud only (drafting)."""
        out = self.rows.logprobs_after(answer_ids)
        return out[0], out[1] - out[0]

    def delta(self, answer_ids: list[int]) -> torch.Tensor | None:
        """d at the end of the answer so far (cloud token ids); None when the device cannot be in
        step yet (the answer ends inside a multi-byte character, another tokenizer)."""
        vmap = self.device.vocab_map
        if vmap is None:
            target = answer_ids
        else:
            text = self.device.cloud_tokenizer.decode(answer_ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                return None
            target = self.device.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        out = self.rows.logprobs_after(target)
        d = out[1] - out[0]
        return d if vmap is None else vmap.to_cloud(d)
