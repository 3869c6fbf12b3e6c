"""`python -m costeer bench`: per-token decode cost of each mode, measured side by side.

Every figure is a median over interleaved repeats (plain, steered, side by side, naive,
plain, ...), so drift in machine load hits all modes alike. Time per token counts decode
steps after the first token; time to first token (prefill + first step) is reported apart.
"""
from __future__ import annotations

import resource
import statistics
import time

import torch

from .decoding import CoSteerEngine, Sampling, _Rows, build_prompts
from .policy import SteeringParams, ftrl_steer

BENCH_PROMPTS = [
    ("Write a short story about a lighthouse keeper who finds a message in a bottle.",
     "I am a retired sailor from Lisbon. I love the sea, old maps and fado music. I write in a warm, nostalgic tone."),
    ("Describe a good weekend for me.",
     "I am a teenage gamer. I play Minecraft and Rocket League and I write casually, with slang."),
]


def _timed(events_iter):
    """Consume a stream of events; return (time to first token, ms per later step, steps)."""
    start = time.perf_counter()
    step_times = {}
    for ev in events_iter:
        step_times.setdefault(ev.step, time.perf_counter())
    steps = sorted(step_times)
    first = step_times[steps[0]] - start
    if len(steps) < 2:
        return first, float("nan"), len(steps)
    per = (step_times[steps[-1]] - step_times[steps[0]]) / (len(steps) - 1)
    return first, per * 1000, len(steps)


def naive_steered_events(engine: CoSteerEngine, messages, context, params, sampling):
    """What the published per-token loop does: three separate forwards, three caches, T-step update."""
    plain, with_ctx = build_prompts(engine.cloud.tokenizer, messages, context)
    llm, slm, slm_ctx = _Rows(engine.cloud, [plain]), _Rows(engine.local, [plain]), _Rows(engine.local, [with_ctx])
    for step in range(sampling.max_new_tokens):
        p = ftrl_steer(llm.logits, slm.logits, slm_ctx.logits, params)[0]
        token = int(torch.argmax(p))
        yield type("Ev", (), {"step": step, "token_id": token})
        if token in engine.eos_ids:
            return
        for rows in (llm, slm, slm_ctx):
            rows.step([token])


def run_bench(engine: CoSteerEngine, tokens: int = 64, repeats: int = 3) -> dict:
    params = SteeringParams()
    sampling = Sampling(max_new_tokens=tokens)
    modes = {
        "plain": lambda m, c: engine.stream(m, c, "unsteered", params, sampling),
        "steered": lambda m, c: engine.stream(m, c, "steered", params, sampling),
        "side_by_side": lambda m, c: engine.stream(m, c, "side_by_side", params, sampling),
        "naive_steered": lambda m, c: naive_steered_events(engine, m, c, params, sampling),
    }
    per_token = {k: [] for k in modes}
    first = {k: [] for k in modes}
    steps = {k: [] for k in modes}
    # warm-up: the first forward of a process pays for allocations and kernel selection
    list(engine.stream([{"role": "user", "content": "Hi"}], "", "steered", params, Sampling(max_new_tokens=4)))
    for _ in range(repeats):
        for prompt, context in BENCH_PROMPTS:
            messages = [{"role": "user", "content": prompt}]
            for name, run in modes.items():
                ttft, ms, n = _timed(run(messages, context))
                first[name].append(ttft * 1000)
                per_token[name].append(ms)
                steps[name].append(n)
    med = {k: statistics.median(v) for k, v in per_token.items()}
    out = {f"{k}_ms_per_token": round(v, 2) for k, v in med.items()}
    out.update({f"{k}_time_to_first_token_ms": round(statistics.median(v), 1) for k, v in first.items()})
    out["steered_over_plain"] = round(med["steered"] / med["plain"], 3)
    out["side_by_side_over_plain"] = round(med["side_by_side"] / med["plain"], 3)
    out["naive_over_steered"] = round(med["naive_steered"] / med["steered"], 3)
    out["tokens_per_run_median"] = {k: statistics.median(v) for k, v in steps.items()}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["repeats"] = repeats * len(BENCH_PROMPTS)
    out["torch_threads"] = torch.get_num_threads()
    out["cloud_model"], out["local_model"] = engine.cloud.name, engine.local.name
    out["same_model"] = engine.same_model
    return out
