"""How to decode one reply, as one frozen, checked value: which streams, the steering (T, η, λ,
α, β), the decoding, the confidence gate, the defences on the delta, the paper's loop or the
closed form, and the schedule (per token, or speculative with K and overlap).

Every caller builds one — the UI, the CLI, the evaluation's method strings, a study's settings —
and `CoSteerEngine.stream(messages, context, spec)` takes it whole, so a new knob is added here
once instead of to every signature. `as_dict`/`from_dict` are its flat, stored form (the keys a
study setting and the API use).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from costeer.engine.sampling import Sampling
from costeer.steering.defences import Defences
from costeer.steering.policy import SteeringParams
from costeer.steering.processors import ConfidenceGate

MODES = ("unsteered", "steered", "side_by_side")
MAX_SPECULATE = 8  # tokens per round trip: a side-by-side round is 2 x 8 rows, serve-cloud's default cap is 32
STEERING_KEYS = ("T", "eta", "lam", "alpha", "beta")
SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_p", "seed", "stop", "repetition_penalty", "no_repeat_ngram_size")
GATE_KEYS = ("gate_threshold", "gate_patience", "gate_mode")
DEFENCE_KEYS = ("deny_ids", "tau", "sigma", "noise_seed", "copy_guard", "private")
SCHEDULE_KEYS = ("mode", "reference", "speculate", "overlap")


def check_speculate(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_SPECULATE:
        raise ValueError(f"speculate must be an integer in [1, {MAX_SPECULATE}] (1 = off), got {k!r}")
    return k


@dataclass(frozen=True)
class DecodeSpec:
    mode: str = "steered"  # "unsteered" (the cloud alone), "steered" (CoSteer) or "side_by_side" (both)
    params: SteeringParams = field(default_factory=SteeringParams)
    sampling: Sampling = field(default_factory=Sampling)
    gate: ConfidenceGate | None = None  # skip the device while the cloud is sure (AdaCoSteer)
    defences: Defences | None = None  # the deny-list, the clip τ, the noise σ and the copy guard, on the device
    reference: bool = False  # steer with the paper's explicit T-step FTRL loop instead of the closed form
    speculate: int = 1  # K > 1: the device drafts, one cloud round trip yields up to K tokens
    overlap: bool = False  # the device's passes run while the cloud's request is in flight

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name, kind in (("params", SteeringParams), ("sampling", Sampling)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        if self.gate is not None and not isinstance(self.gate, ConfidenceGate):
            raise ValueError(f"gate must be a ConfidenceGate or None, got {type(self.gate).__name__}")
        if self.defences is not None and not isinstance(self.defences, Defences):
            raise ValueError(f"defences must be Defences or None, got {type(self.defences).__name__}")
        for name in ("reference", "overlap"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        check_speculate(self.speculate)
        if self.private and self.speculative:
            raise ValueError("Private mode decodes one token per cloud round trip (speculate 1, no overlap): "
                             "the cloud scores a draft before the device could keep any of it back")

    @property
    def private(self) -> bool:
        """A split transcript (steering/private.py): the cloud gets stand-ins for the kept-back tokens."""
        return self.defences is not None and self.defences.private is not None

    @property
    def streams(self) -> list[str]:
        return ["unsteered", "steered"] if self.mode == "side_by_side" else [self.mode]

    @property
    def speculative(self) -> bool:
        """Decoded by rounds of positions (speculative.rounds) rather than one token per step."""
        return self.speculate > 1 or self.overlap

    def as_dict(self) -> dict:
        out = {"mode": self.mode, **self.params.as_dict(), **self.sampling.as_dict(), "stop": list(self.sampling.stop),
               "reference": self.reference, "speculate": self.speculate, "overlap": self.overlap}
        if self.gate is not None:
            out.update(gate_threshold=self.gate.threshold, gate_patience=self.gate.patience, gate_mode=self.gate.mode)
        if self.defences is not None:
            d = self.defences
            out.update(deny_ids=list(d.deny_ids), tau=d.tau, sigma=d.sigma, noise_seed=d.seed, copy_guard=d.copy_guard)
            if d.private is not None:
                out["private"] = d.private
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "DecodeSpec":
        """The inverse of `as_dict`; a key left out takes its default, an unknown key is refused."""
        known = (*SCHEDULE_KEYS, *STEERING_KEYS, *SAMPLING_KEYS, *GATE_KEYS, *DEFENCE_KEYS)
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown setting {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
        pick = lambda keys: {k: values[k] for k in keys if k in values}  # noqa: E731
        sampling = pick(SAMPLING_KEYS)
        if "stop" in sampling:
            sampling["stop"] = tuple(sampling["stop"])
        gate = ConfidenceGate(**{k.removeprefix("gate_"): v for k, v in pick(GATE_KEYS).items()}) \
            if any(k in values for k in GATE_KEYS) else None
        defences = None
        if any(k in values for k in DEFENCE_KEYS):
            d = pick(DEFENCE_KEYS)
            defences = Defences(deny_ids=tuple(d.get("deny_ids", ())), tau=d.get("tau"), sigma=d.get("sigma", 0.0),
                                seed=d.get("noise_seed"), copy_guard=d.get("copy_guard", 0), private=d.get("private"))
        return cls(params=SteeringParams(**pick(STEERING_KEYS)), sampling=Sampling(**sampling), gate=gate,
                   defences=defences, **pick(SCHEDULE_KEYS))
