"""`python -m costeer bench --remote`: remote decoding at simulated network distances.

Modes, measured side by side in one process against one cloud server behind a loopback delay
proxy (netdelay.py), with the proxy's round-trip time changed between runs:
    per_token     today's loop: a round trip, then the device's passes, then the next request
    overlap       the device's passes while the request is in flight (speculate 1)
    speculate_K   the device drafts, one round trip scores up to K positions (speculative.py)
Every mode decodes the same greedy steered answers; each mode's token ids are checked against
per_token's and the table says whether they were identical.
"""
from __future__ import annotations

import statistics
import time

from costeer.bench.netdelay import DelayProxy
from costeer.bench.speed import BENCH_PROMPTS, serve_cloud_process
from costeer.engine.decoding import CoSteerEngine, Sampling
from costeer.engine.device import DeviceLM
from costeer.engine.spec import DecodeSpec
from costeer.engine.speculative import Speculation
from costeer.steering.policy import SteeringParams

RTTS_MS = (0, 25, 50, 100)
SPECULATE = (2, 4, 8)


def _run(engine, messages, context, tokens, speculate, overlap):
    """(ms per token from the request to the last token, token ids, the drafting tally). The whole
    answer is timed, prefill included (alike in every mode): timing from the first token on would
    leave out a speculative answer's first round and flatter it."""
    spec, ids, times = Speculation(), [], []
    start = time.perf_counter()
    spec = DecodeSpec("steered", SteeringParams(), Sampling(max_new_tokens=tokens), speculate=speculate, overlap=overlap)
    for ev in engine.stream(messages, context, spec):
        times.append(time.perf_counter())
        ids.append(ev.token_id)
        spec.add(ev)
    return (times[-1] - start) / len(times) * 1000, ids, spec


def remote_bench(lm, url: str | None = None, rtts=RTTS_MS, ks=SPECULATE, tokens: int = 64, repeats: int = 1,
                 top_k: int = 20, progress=None) -> dict:
    """The table: for each RTT and mode, median ms/token, round trips per token, acceptance."""
    from contextlib import nullcontext

    from costeer.engine.cloud import RemoteCloud

    modes = [("per_token", 1, False), ("overlap", 1, True)] + [(f"speculate_{k}", k, False) for k in ks]
    server = nullcontext(url) if url else serve_cloud_process(lm.name, top_k)
    rows = []
    with server as cloud_url, DelayProxy(cloud_url) as proxy:
        cloud = RemoteCloud(proxy.url, lm.tokenizer, lm.vocab_size, lm.eos_ids, top_k=top_k).connect()
        engine = CoSteerEngine(cloud, DeviceLM(lm))
        for prompt, context in BENCH_PROMPTS[:1]:  # warm both sides' caches and code paths
            _run(engine, [{"role": "user", "content": prompt}], context, 4, 2, False)
        for rtt in rtts:
            proxy.rtt_ms = rtt
            got = {m: {"ms": [], "rt": [], "acc": [], "same": True} for m, _, _ in modes}
            for _ in range(repeats):
                for prompt, context in BENCH_PROMPTS:
                    messages = [{"role": "user", "content": prompt}]
                    want = None
                    for name, k, overlap in modes:  # interleaved: drift hits every mode alike
                        ms, ids, spec = _run(engine, messages, context, tokens, k, overlap)
                        want = ids if want is None else want
                        g = got[name]
                        g["ms"].append(ms)
                        g["rt"].append(spec.rounds / spec.tokens if spec.tokens and name != "per_token" else 1.0)
                        if spec.acceptance is not None:
                            g["acc"].append(spec.acceptance)
                        g["same"] &= ids == want
                        if progress:
                            progress(f"rtt {rtt} ms {name}: {ms:.1f} ms/token")
            base = statistics.median(got["per_token"]["ms"])
            for name, k, _ in modes:
                g = got[name]
                ms = statistics.median(g["ms"])
                rows.append({"rtt_ms": rtt, "mode": name, "K": k, "ms_per_token": round(ms, 1),
                             "round_trips_per_token": round(statistics.mean(g["rt"]), 3),
                             "acceptance": round(statistics.mean(g["acc"]), 3) if g["acc"] else None,
                             "speedup_vs_per_token": round(base / ms, 2), "identical_to_per_token": g["same"]})
    return {"remote_table": rows, "remote_tokens": tokens, "remote_top_k": top_k, "remote_repeats": repeats,
            "remote_server": url or "serve-cloud (bundled model, started by the bench)"}


def table_markdown(rows: list[dict]) -> str:
    head = "| RTT ms | mode | ms/token | round trips/token | acceptance | vs per-token | identical |\n|---|---|---|---|---|---|---|"
    lines = [head]
    for r in rows:
        acc = "–" if r["acceptance"] is None else f"{100 * r['acceptance']:.0f} %"
        lines.append(f"| {r['rtt_ms']} | {r['mode']} | {r['ms_per_token']} | {r['round_trips_per_token']} | {acc} | "
                     f"{r['speedup_vs_per_token']}× | {'yes' if r['identical_to_per_token'] else 'NO'} |")
    return "\n".join(lines)


__all__ = ["remote_bench", "table_markdown", "RTTS_MS", "SPECULATE"]
