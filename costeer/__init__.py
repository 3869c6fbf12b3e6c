"""CoSteer: decoding-time personalization of a cloud LLM by a local model's delta (arXiv 2507.04756).

The package's face: the engine and the objects that say how to decode. The sub-packages say the
architecture: steering/ (the paper's policy, the processors, the defences), engine/ (the spec,
the token loop and its schedules, the cloud and device sides), models/ (loading, CPU kernels),
serving/ (serve-cloud), evaluation/ (eval and the privacy audit), bench/ (benchmarks); the CLI
is __main__.py. The engine's names load on first use (PEP 562): the engine imports the policy.

    from costeer import build_engine, load_model, DecodeSpec, Sampling
    engine = build_engine(load_model("bundled:SmolLM2-135M-Instruct"))
    for event in engine.stream(messages, context, DecodeSpec(sampling=Sampling(max_new_tokens=64))): ...
"""
from .steering.policy import SteeringParams, closed_form_steer, effective_strength, ftrl_steer

_LAZY = {  # name -> the module that owns it
    "CoSteerEngine": "engine.decoding", "build_engine": "engine.decoding", "TokenEvent": "engine.decoding",
    "CloudTranscript": "engine.decoding", "DecodeSpec": "engine.spec", "ReplySummary": "engine.summary",
    "Sampling": "engine.sampling", "Defences": "steering.defences", "ConfidenceGate": "steering.processors",
    "Speculation": "engine.speculative", "load_model": "models.load",
}

__all__ = ["SteeringParams", "ftrl_steer", "closed_form_steer", "effective_strength", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
