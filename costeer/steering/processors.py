"""Steering processors: the base distribution b and the personal delta d in, the steered p out.

One call contract, like transformers' `LogitsProcessor`:
    processor.wants_delta(b_cloud) -> bool    asked first, so a gate can spare the device its passes
    processor(b, d) -> p                      log-probs (V,); d is None when the device did not run
`b_cloud` is what the cloud said (exact in process, top-k with -inf elsewhere over HTTP); `b` is
it renormalized. Processors are made per answer (`start()`), since a gate remembers its state.

    ClosedForm      p = log_softmax(b + C*d): what the engine runs, O(V) per token
    FTRLReference   the paper's T explicit FTRL steps: what tests and the naive benchmark hold it to
    Gate            wraps either: d = 0 (p = b) while the cloud is confident
    Defended        the deny-list and the noise (defences.py) around either
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from costeer.steering.policy import SteeringParams, effective_strength, ftrl_from_logprobs

GATE_MODES = ("paper", "reopen")


class ClosedForm:
    def __init__(self, params: SteeringParams):
        self.params, self.strength = params, effective_strength(params)

    def wants_delta(self, b_cloud: torch.Tensor) -> bool:
        return True

    def __call__(self, b: torch.Tensor, d: torch.Tensor | None) -> torch.Tensor:
        return b if d is None else torch.log_softmax(b + self.strength * d, dim=-1)


class FTRLReference(ClosedForm):
    def __call__(self, b: torch.Tensor, d: torch.Tensor | None) -> torch.Tensor:
        return b if d is None else ftrl_from_logprobs(b, d, self.params)


@dataclass(frozen=True)
class ConfidenceGate:
    """Skip the device passes while the cloud is sure (AdaCoSteer, the paper's adaptive variant).

    Confident means the cloud's top probability >= 1 - threshold. After `patience` confident
    steps in a row:
      mode "paper"   fusion stays off for the rest of the answer, as the official AdaCoSteer does
      mode "reopen"  fusion comes back as soon as the cloud is unsure again (the device caches
                     then catch up in one forward)
    Over HTTP the top probability is the cloud's own (unnormalized over its top-k), so a top-k
    cut never makes the cloud look surer than it is."""

    threshold: float = 0.1
    patience: int = 3
    mode: str = "paper"

    def __post_init__(self):
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or \
                not math.isfinite(self.threshold) or not 0 < self.threshold < 1:
            raise ValueError(f"gate threshold must be in (0, 1), got {self.threshold!r}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or not 1 <= self.patience <= 100:
            raise ValueError(f"gate patience must be an integer in [1, 100], got {self.patience!r}")
        if self.mode not in GATE_MODES:
            raise ValueError(f"gate mode must be one of {', '.join(GATE_MODES)}, got {self.mode!r}")


class Gate:
    def __init__(self, inner: ClosedForm, gate: ConfidenceGate):
        self.inner, self.gate = inner, gate
        self.confident = 0
        self.closed = False  # "paper" mode: fusion switched off for good

    def wants_delta(self, b_cloud: torch.Tensor) -> bool:
        if self.closed:
            return False
        sure = float(b_cloud.max()) >= math.log1p(-self.gate.threshold)
        self.confident = self.confident + 1 if sure else 0
        if self.confident >= self.gate.patience:
            self.closed = self.gate.mode == "paper"
            return False
        return True

    def __call__(self, b, d):
        return self.inner(b, d)


def processor(params: SteeringParams, gate: ConfidenceGate | None = None, reference: bool = False,
              defences=None, seed: int = 0, salt: int = 0):
    """A fresh processor for one answer: the policy, the defences around it (defences.py), the
    gate outermost (it decides whether d is computed at all)."""
    inner = (FTRLReference if reference else ClosedForm)(params)
    if defences is not None and defences.active:
        from costeer.steering.defences import Defended

        inner = Defended(inner, defences, seed, salt)
    return inner if gate is None else Gate(inner, gate)


def kl_divergence(p: torch.Tensor, b: torch.Tensor) -> float:
    """KL(p || b) in nats over the tokens p gives mass to (a top-k cloud leaves the rest at -inf,
    where p - b would be NaN)."""
    live = torch.isfinite(p)
    kl = float((p[live].exp() * (p[live] - b[live])).sum())
    return max(kl, 0.0)
