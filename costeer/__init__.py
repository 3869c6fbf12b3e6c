"""CoSteer: decoding-time personalization of a cloud LLM by a local model's delta (arXiv 2507.04756).

The package's face: the engine and the objects that say how to decode. The engine's modules
import this package's policy, so they are loaded on first use (PEP 562), not here.

    from costeer import build_engine, load_model, SteeringParams, Sampling
    engine = build_engine(load_model("bundled:SmolLM2-135M-Instruct"))
    for event in engine.stream(messages, context, params=SteeringParams(), sampling=Sampling(max_new_tokens=64)): ...
"""
from .policy import SteeringParams, closed_form_steer, effective_strength, ftrl_steer

_LAZY = {  # name -> the module that owns it
    "CoSteerEngine": "decoding", "build_engine": "decoding", "TokenEvent": "decoding",
    "CloudTranscript": "decoding", "Sampling": "sampling", "Defences": "defences",
    "ConfidenceGate": "steering", "Speculation": "speculative", "load_model": "models",
}

__all__ = ["SteeringParams", "ftrl_steer", "closed_form_steer", "effective_strength", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
