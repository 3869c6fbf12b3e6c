"""Where the rows of one answer live: two arrangements of the same parts, chosen once when the
engine is built.

    Split      any CloudLM and any DeviceLM, as in the paper's deployment. The cloud's rows get
               the conversation's token ids and the chosen tokens; the device's rows get the
               context. Nothing connects the two but the engine's loop.
    OneModel   the single-process demo: one model plays both roles (the bundled default). The
               device's without-context row is then the same computation as the cloud's steered
               row, so it is shared, and (without a gate) the device's with-context row rides in
               the cloud's batch: three distributions for one batched forward. Both roles share a
               process here; the boundary it demonstrates is the one Split enforces. In Private
               mode the cloud's and the device's texts differ, so nothing is shared: it runs as Split.

A `Plan` holds one answer's rows: cloud log-probs per stream (`base`), the delta at the steered
answer's end (`delta`), and `advance`, which feeds the chosen tokens and drops finished streams.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from costeer.engine.cloud import CloudLM, InProcessCloud, Rows
from costeer.engine.device import DeviceLM
from costeer.engine.prompts import check_fits, with_context_ids
from costeer.engine.rows import LazyRows, ModelRows
from costeer.models.load import LoadedModel

PRIVATE_ROW = "device_ctx"  # OneModel's with-context row; it follows the steered stream


class Plan:
    def __init__(self, rows: Rows, names: list[str], delta: Callable[[list[int]], torch.Tensor | None] | None):
        self.rows, self.names, self._delta = rows, names, delta
        self.cloud_ms = 0.0  # time of the last forward (or round trip) that produced `base`

    @property
    def live(self) -> list[str]:
        return [n for n in self.names if n != PRIVATE_ROW]

    def base(self, stream: str) -> torch.Tensor:
        return self.rows.logprobs[self.names.index(stream)]

    def delta(self, answer_ids: list[int]) -> torch.Tensor | None:
        return self._delta(answer_ids)

    def advance(self, chosen: dict[str, int]):
        """Feed each live stream's chosen token; streams missing from `chosen` have finished."""
        follows = lambda n: "steered" if n == PRIVATE_ROW else n  # noqa: E731
        keep = [i for i, n in enumerate(self.names) if follows(n) in chosen]
        if len(keep) < len(self.names):
            self.rows.keep(keep)
            self.names = [self.names[i] for i in keep]
        start = time.perf_counter()
        self.rows.step([chosen[follows(n)] for n in self.names])
        self.cloud_ms = (time.perf_counter() - start) * 1000


class Split:
    name = "split"

    def __init__(self, cloud: CloudLM, device: DeviceLM):
        self.cloud, self.device = cloud, device

    def open(self, cloud_prompts: dict[str, list[int]], messages: list[dict], context: str, gated: bool,
             max_new_tokens: int, split: bool = False) -> Plan:
        device = self.device.open(messages, context, max_new_tokens) if "steered" in cloud_prompts else None
        start = time.perf_counter()
        plan = Plan(self.cloud.open(list(cloud_prompts.values())), list(cloud_prompts),
                    device.delta if device else None)
        plan.cloud_ms = (time.perf_counter() - start) * 1000
        return plan


class OneModel:
    name = "one-model"

    def __init__(self, lm: LoadedModel):
        self.lm, self.cloud, self.device = lm, InProcessCloud(lm), DeviceLM(lm)

    def open(self, cloud_prompts: dict[str, list[int]], messages: list[dict], context: str, gated: bool,
             max_new_tokens: int, split: bool = False) -> Plan:
        if split:  # Private mode: the cloud's rows follow the public text, the device's the private one
            return Split(self.cloud, self.device).open(cloud_prompts, messages, context, gated, max_new_tokens)
        names, prompts = list(cloud_prompts), list(cloud_prompts.values())
        start = time.perf_counter()
        if "steered" not in names:
            plan = Plan(ModelRows(self.lm, prompts), names, None)
            plan.cloud_ms = (time.perf_counter() - start) * 1000
            return plan
        private = with_context_ids(self.lm.tokenizer, messages, context)  # the device role's with-context row
        check_fits("the device model's", len(private), self.lm.context_limit, max_new_tokens)
        if gated:  # the with-context row follows lazily, so a gated step costs it nothing
            lazy = LazyRows(self.lm, [private])
            plan = Plan(ModelRows(self.lm, prompts), names, None)
            plan._delta = lambda ids: lazy.logprobs_after(ids)[0] - plan.base("steered")
        else:
            plan = Plan(ModelRows(self.lm, prompts + [private]), names + [PRIVATE_ROW], None)
            plan._delta = lambda ids: plan.base(PRIVATE_ROW) - plan.base("steered")
        plan.cloud_ms = (time.perf_counter() - start) * 1000
        return plan
