"""The CoSteer steering policy (arXiv 2507.04756, the per-token FTRL update).

Notation follows the paper:
    b = log_softmax(LLM logits)                      the cloud's base log-distribution
    d = log_softmax(SLM | context) - log_softmax(SLM) the device's personal delta
    p_0 = b
    for t = 1..T:
        u_t = alpha * (p_{t-1} - b) + beta * d
        U_t = U_{t-1} + u_t
        p_t = log_softmax((t*lam*b + U_t + p_{t-1}/eta) / (t*lam + 1/eta))

Every step is affine in (b, d) up to a per-row constant, and log_softmax drops
per-row constants. Writing p_t = a_t*b + c_t*d + const, the same recurrence on the
scalars gives a_t = 1 for all t, so p_T = log_softmax(b + C*d) with one scalar
C = c_T(T, eta, lam, alpha, beta): the *effective steering strength*.
`ftrl_steer` is the step-by-step reference; `closed_form_steer` is what the engine runs.
All math is in float32 even when the models run in half precision: the update
subtracts nearly equal log-probs, which loses everything in fp16/bf16.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

T_MAX = 1000


@dataclass(frozen=True)
class SteeringParams:
    """The policy's hyperparameters; defaults are the paper's (T=20, eta=10, lam=2, alpha=2, beta=1)."""

    T: int = 20
    eta: float = 10.0
    lam: float = 2.0
    alpha: float = 2.0
    beta: float = 1.0

    def __post_init__(self):
        if isinstance(self.T, bool) or not isinstance(self.T, int):
            if isinstance(self.T, float) and self.T.is_integer():
                object.__setattr__(self, "T", int(self.T))
            else:
                raise ValueError(f"T must be an integer in [1, {T_MAX}], got {self.T!r}")
        if not 1 <= self.T <= T_MAX:
            raise ValueError(f"T must be an integer in [1, {T_MAX}], got {self.T}")
        for name in ("eta", "lam", "alpha", "beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
            object.__setattr__(self, name, float(value))
        for name in ("eta", "lam"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 (a finite positive number), got {getattr(self, name)}")

    def as_dict(self) -> dict:
        return asdict(self)


def effective_strength(params: SteeringParams) -> float:
    """C such that the T-step FTRL policy equals log_softmax(b + C*d).

    The recurrence on the coefficient of d (the coefficient of b stays 1):
        V_t = V_{t-1} + alpha*c_{t-1} + beta           (coefficient of d in U_t)
        c_t = (V_t + c_{t-1}/eta) / (t*lam + 1/eta)
    """
    c, V = 0.0, 0.0
    for t in range(1, params.T + 1):
        V += params.alpha * c + params.beta
        c = (V + c / params.eta) / (t * params.lam + 1.0 / params.eta)
    return c


def _base_and_delta(llm_logits, slm_without_logits, slm_with_logits):
    shapes = {tuple(x.shape) for x in (llm_logits, slm_without_logits, slm_with_logits)}
    if len(shapes) != 1:
        raise ValueError(
            "llm_logits, slm_without_logits and slm_with_logits must have the same shape "
            f"[batch, vocab], got {[tuple(x.shape) for x in (llm_logits, slm_without_logits, slm_with_logits)]}"
        )
    if llm_logits.dim() != 2:
        raise ValueError(f"logits must be 2-D [batch, vocab], got shape {tuple(llm_logits.shape)}")
    b = torch.log_softmax(llm_logits.float(), dim=-1)
    d = torch.log_softmax(slm_with_logits.float(), dim=-1) - torch.log_softmax(slm_without_logits.float(), dim=-1)
    return b, d


def ftrl_steer(llm_logits, slm_without_logits, slm_with_logits, params: SteeringParams = SteeringParams()):
    """The paper's update, T explicit iterations. Returns p_T, log-probs [batch, vocab]."""
    b, d = _base_and_delta(llm_logits, slm_without_logits, slm_with_logits)
    return ftrl_from_logprobs(b, d, params)


def closed_form_steer(llm_logits, slm_without_logits, slm_with_logits, params: SteeringParams = SteeringParams()):
    """Same result as `ftrl_steer` in O(vocab): log_softmax(b + C*d)."""
    b, d = _base_and_delta(llm_logits, slm_without_logits, slm_with_logits)
    return torch.log_softmax(b + effective_strength(params) * d, dim=-1)


def steer_from_logprobs(b: torch.Tensor, d: torch.Tensor, strength: float) -> torch.Tensor:
    """The engine's hot path: b and d already computed, C already known."""
    return torch.log_softmax(b + strength * d, dim=-1)


def ftrl_from_logprobs(b: torch.Tensor, d: torch.Tensor, params: SteeringParams) -> torch.Tensor:
    """The T-step loop on b and d already computed (the reference steering processor)."""
    p, U = b, torch.zeros_like(b)
    inv_eta = 1.0 / params.eta
    for t in range(1, params.T + 1):
        U = U + params.alpha * (p - b) + params.beta * d
        p = torch.log_softmax((t * params.lam * b + U + p * inv_eta) / (t * params.lam + inv_eta), dim=-1)
    return p
