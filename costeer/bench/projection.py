""""Will it run on my PC?": the expected speed of a real pair, projected from this machine's
measured device speed.

What is measured here: the device's passes per step (two rows: with and without the context) and
the time to the first token, for the device model actually loaded. What is assumed, and stated
beside every figure: the real device model's size and precision, the cloud's time per step, and
the network round trip. The projection scales the measured step by the weights' bytes (decoding
one token reads every weight once, so on a CPU it is bound by memory bandwidth) and the first
token by the parameter count (the prompt pass is bound by arithmetic). Speculation uses
`speculative.expected_speedup` with an assumed acceptance rate.
"""
from __future__ import annotations

from dataclasses import dataclass

from costeer.engine.speculative import expected_speedup

SPECULATE_K = 4
ACCEPTANCE = 0.7  # assumed for a small device drafting for a 7B cloud; 1.0 when one model plays both roles
INT4_BYTES = 0.5625  # 4-bit weights with a 16-bit scale per 32-weight group (GGUF Q4_0-like)


@dataclass(frozen=True)
class Pair:
    """A real deployment to project: the device model's size and precision, the cloud's time per
    step and per prompt (assumptions about a GPU server), and the network between them."""

    name: str
    device: str
    device_params_b: float  # billions of parameters
    bytes_per_param: float
    cloud: str
    cloud_ms: float  # one decode step of the cloud model, on its server
    cloud_prefill_ms: float  # the cloud's prompt pass
    rtt_ms: float  # one network round trip, device to cloud

    def describe(self) -> str:
        bits = round(self.bytes_per_param * 8, 1)
        return (f"{self.device} ({self.device_params_b:g}B params, {bits:g} bits/weight) on the device; {self.cloud} "
                f"at {self.cloud_ms:g} ms/step (prompt {self.cloud_prefill_ms:g} ms); {self.rtt_ms:g} ms round trip")


PAIRS = (
    Pair("paper pair, 0.5B device", "Qwen2.5-0.5B-Instruct", 0.494, INT4_BYTES, "Qwen2.5-7B-Instruct", 20.0, 80.0, 50.0),
    Pair("paper pair, 1.5B device", "Qwen2.5-1.5B-Instruct", 1.54, INT4_BYTES, "Qwen2.5-7B-Instruct", 20.0, 80.0, 50.0),
    Pair("laptop on Wi-Fi, 0.5B in bf16", "Qwen2.5-0.5B-Instruct", 0.494, 2.0, "Qwen2.5-7B-Instruct", 20.0, 80.0, 30.0),
)


@dataclass(frozen=True)
class Measured:
    """This machine's device, as measured in one reply (or `bench --project`)."""

    device_ms: float  # the device's two passes per step
    steer_ms: float  # steering and choosing per step
    first_token_ms: float
    weight_bytes: int  # the loaded device model's weights
    params: int
    cpu: str


def measured_from(summary: dict, device_model, shared: bool, cpu: str) -> Measured:
    """From a reply's latency summary. With one model in both roles the device's rows ride in the
    cloud's forward, so that whole forward is taken as the device's time (an upper bound)."""
    from costeer.models.cpu_linear import product_layers, weight_bytes

    per = summary["per_step_ms"]
    # what a step reads: the products' weights in the precision they run in (int4: ~95 MB, fp32: ~538 MB);
    # the parameter count is the products' whatever their precision (norms are a rounding error)
    return Measured(device_ms=per["cloud"] + per["device"] if shared else per["device"], steer_ms=per["steering"],
                    first_token_ms=summary["time_to_first_token_ms"], weight_bytes=weight_bytes(device_model),
                    params=sum(m.in_features * m.out_features for m in product_layers(device_model)), cpu=cpu)


def project(m: Measured, pair: Pair, acceptance: float = ACCEPTANCE, K: int = SPECULATE_K) -> dict:
    """Expected ms per token and time to first token for `pair`, per-token and speculating."""
    device = m.device_ms * pair.device_params_b * 1e9 * pair.bytes_per_param / m.weight_bytes
    per_token = pair.rtt_ms + pair.cloud_ms + device + m.steer_ms
    speedup = expected_speedup(acceptance, K, pair.rtt_ms, pair.cloud_ms + m.steer_ms, device)
    first = pair.rtt_ms + pair.cloud_prefill_ms + m.first_token_ms * pair.device_params_b * 1e9 / m.params
    return {"pair": pair.name, "inputs": pair.describe(), "device_ms_per_step": round(device, 1),
            "ms_per_token": round(per_token, 1), "tokens_per_s": round(1000 / per_token, 1),
            f"speculate_{K}_ms_per_token": round(per_token / speedup, 1), "acceptance_assumed": acceptance,
            "time_to_first_token_ms": round(first, 0)}


def projections(m: Measured, pairs=PAIRS) -> list[dict]:
    return [project(m, p) for p in pairs]


def basis(m: Measured) -> str:
    return (f"measured on {m.cpu}: the device's two passes {m.device_ms:.1f} ms/step for {m.params / 1e6:.0f}M "
            f"parameters ({m.weight_bytes / 1e6:.0f} MB of weights), first token {m.first_token_ms:.0f} ms")


def projection_table(m: Measured, rows: list[dict]) -> str:
    lines = [f"Projected from {basis(m)}.",
             f"{'pair':32s} {'ms/token':>9s} {'tok/s':>6s} {'K=' + str(SPECULATE_K):>7s} {'first token':>12s}"]
    for r in rows:
        lines.append(f"{r['pair']:32s} {r['ms_per_token']:9.1f} {r['tokens_per_s']:6.1f} "
                     f"{r[f'speculate_{SPECULATE_K}_ms_per_token']:7.1f} {r['time_to_first_token_ms'] / 1000:11.2f}s")
    lines += [f"  {r['pair']}: {r['inputs']}" for r in rows]
    lines.append(f"Assumed: the cloud's times (a 7B model on one server GPU), the round trips, and {ACCEPTANCE:.0%} of "
                 f"drafts kept at K={SPECULATE_K}. Device steps scale with weight bytes (memory-bound), the first "
                 "token with parameters (compute-bound). A faster PC (more cores, more memory bandwidth) does better.")
    return "\n".join(lines)

