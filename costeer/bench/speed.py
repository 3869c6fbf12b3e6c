"""`python -m costeer bench`: per-token decode cost of each mode, measured side by side.

Every figure is a median over interleaved repeats (plain, steered, side by side, naive,
plain, ...), so drift in machine load hits all modes alike. Time per token counts decode
steps after the first token; time to first token (prefill + first step) is reported apart.
"""
from __future__ import annotations

import resource
import statistics
import time
from contextlib import contextmanager
from dataclasses import replace

import torch

from costeer.engine.decoding import CoSteerEngine, Sampling
from costeer.engine.device import DeviceLM
from costeer.engine.prompts import build_prompts
from costeer.engine.rows import ModelRows
from costeer.engine.spec import DecodeSpec
from costeer.models.cpu_linear import (WeightLeftLinear, matmul_floor_ms, matmul_hot_cache_ms, orientation_times,
                                       weight_bytes)
from costeer.steering.policy import SteeringParams

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


def naive_engine(engine: CoSteerEngine) -> CoSteerEngine:
    """The published loop's layout: the cloud and the device apart, nothing shared."""
    return CoSteerEngine(engine.cloud, DeviceLM(engine.device.lm, engine.cloud.tokenizer, engine.device.lm.vocab_size))


def naive_steered_events(engine: CoSteerEngine, messages, context, params, sampling):
    """What the published per-token loop does: the cloud's and the device's forwards apart, and the
    T-step FTRL update (the reference steering processor) instead of the closed form."""
    return naive_engine(engine).stream(messages, context, DecodeSpec("steered", params, sampling, reference=True))


def run_bench(engine: CoSteerEngine, tokens: int = 64, repeats: int = 3, sampling: Sampling | None = None) -> dict:
    """Every mode with the same decoding; `steered_repetition_control` adds the app's default
    repetition control to the steered mode, to show what it costs."""
    params = SteeringParams()
    sampling = sampling or Sampling(max_new_tokens=tokens)
    controlled = replace(sampling, repetition_penalty=1.1, no_repeat_ngram_size=4)
    modes = {
        "plain": lambda m, c: engine.stream(m, c, DecodeSpec("unsteered", params, sampling)),
        "steered": lambda m, c: engine.stream(m, c, DecodeSpec("steered", params, sampling)),
        "side_by_side": lambda m, c: engine.stream(m, c, DecodeSpec("side_by_side", params, sampling)),
        "naive_steered": lambda m, c: naive_steered_events(engine, m, c, params, sampling),
        "steered_repetition_control": lambda m, c: engine.stream(m, c, DecodeSpec("steered", params, controlled)),
    }
    per_token = {k: [] for k in modes}
    first = {k: [] for k in modes}
    steps = {k: [] for k in modes}
    # warm-up: the first forward of a process pays for allocations and kernel selection
    list(engine.stream([{"role": "user", "content": "Hi"}], "", DecodeSpec("steered", params, Sampling(max_new_tokens=4))))
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
    model = engine.device.lm.model
    floor = matmul_floor_ms(model)
    out["matmul_floor_ms_per_token"] = round(floor, 2)
    out["matmul_hot_cache_ms_per_token"] = round(matmul_hot_cache_ms(model), 2)
    out["plain_over_matmul_floor"] = round(med["plain"] / floor, 3)
    out["precision"] = engine.device.lm.precision
    out["weights_mb_per_step"] = round(weight_bytes(model) / 1e6, 1)
    if engine.device.lm.precision == "fp32":
        out["linear_orientation"] = "weight-left" if any(isinstance(m, WeightLeftLinear) for m in model.modules()) else "stock"
        out["linear_orientation_probe"] = orientation_times(model)
    out["steered_over_plain"] = round(med["steered"] / med["plain"], 3)
    out["side_by_side_over_plain"] = round(med["side_by_side"] / med["plain"], 3)
    out["naive_over_steered"] = round(med["naive_steered"] / med["steered"], 3)
    out["repetition_control_over_steered"] = round(med["steered_repetition_control"] / med["steered"], 3)
    out["decoding"] = sampling.as_dict()
    out["tokens_per_run_median"] = {k: statistics.median(v) for k, v in steps.items()}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["repeats"] = repeats * len(BENCH_PROMPTS)
    out["torch_threads"] = torch.get_num_threads()
    out["cloud_model"], out["local_model"] = engine.cloud.name, engine.device.name
    out["same_model"] = engine.same_model
    return out


def fp32_reference(engine: CoSteerEngine, fast: dict, tokens: int = 64, repeats: int = 3,
                   sampling: Sampling | None = None) -> dict:
    """For a quantized engine whose `run_bench` figures are `fast`: the same modes on an fp32 copy
    of its model in the same run, the speed-ups over it, and top-1 agreement with it over 100
    teacher-forced steps (bench/precision.py)."""
    from costeer.bench.precision import top1_agreement
    from costeer.engine.decoding import build_engine
    from costeer.models.load import load_model

    lm = engine.device.lm
    reference = load_model(lm.name, lm.device)
    fp32 = run_bench(build_engine(reference, reference), tokens, repeats, sampling)
    out = {f"fp32_{k}_ms_per_token": fp32[f"{k}_ms_per_token"] for k in ("plain", "steered", "side_by_side")}
    out.update({f"{k}_speedup_over_fp32": round(fp32[f"{k}_ms_per_token"] / fast[f"{k}_ms_per_token"], 3)
                for k in ("plain", "steered", "side_by_side")})
    out["fp32_weights_mb_per_step"], out["fp32_matmul_floor_ms_per_token"] = (fp32["weights_mb_per_step"],
                                                                              fp32["matmul_floor_ms_per_token"])
    agreement = top1_agreement(reference, lm, steps=100)
    out["top1_agreement_with_fp32"], out["top1_misses_fp32_margin_nats"] = (agreement["top1_agreement"],
                                                                            agreement["miss_margins_nats"])
    return out


def topk_agreement(engine: CoSteerEngine, ks=(5, 20, 100), tokens: int = 48) -> dict:
    """Share of steps where steering among the cloud's top-k picks the token full-vocabulary steering
    picks (greedy, teacher-forced along the full-vocabulary answer, over BENCH_PROMPTS)."""
    from costeer.steering.policy import effective_strength, steer_from_logprobs

    C = effective_strength(SteeringParams())
    same = {k: 0 for k in ks}
    steps = 0
    for prompt, context in BENCH_PROMPTS:
        plain, with_ctx = build_prompts(engine.device.tokenizer, [{"role": "user", "content": prompt}], context)
        cloud, device = engine.cloud.open([plain]), ModelRows(engine.device.lm, [plain, with_ctx])
        for _ in range(tokens):
            b = cloud.logprobs[0]
            d = device.logprobs[1] - device.logprobs[0]
            full = int(torch.argmax(steer_from_logprobs(b, d, C)))
            for k in ks:
                top = torch.topk(b, k).indices
                masked = torch.full_like(b, float("-inf"))
                masked[top] = b[top]  # what a top-k cloud returns
                same[k] += int(int(torch.argmax(steer_from_logprobs(torch.log_softmax(masked, -1), d, C))) == full)
            steps += 1
            if full in engine.eos_ids:
                break
            cloud.step([full])
            device.step([full, full])
    return {f"top{k}_agreement": round(same[k] / steps, 4) for k in ks} | {"agreement_steps": steps}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, proc, name: str, tries: int = 600):
    import urllib.request

    for _ in range(tries):
        try:
            urllib.request.urlopen(url + "/health", timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited during start-up") from None
            time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer at {url}")


@contextmanager
def serve_cloud_process(model: str, top_k: int = 20, precision: str = "fp32"):
    """`serve-cloud` for `model` as its own process on a free loopback port; always stopped."""
    import subprocess
    import sys
    from pathlib import Path

    port = _free_port()
    root = Path(__file__).resolve().parents[2]  # the project folder, so -m costeer finds this copy
    server = subprocess.Popen([sys.executable, "-m", "costeer", "serve-cloud", "--port", str(port),
                               "--model", model, "--max-logprobs", str(top_k), "--precision", precision],
                              cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, server, "serve-cloud")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=20)


def http_vs_in_process(engine: CoSteerEngine, tokens: int = 32, repeats: int = 2, top_k: int = 20) -> dict:
    """Steered ms/token with the cloud in this process vs behind `serve-cloud` over loopback HTTP,
    and the requests/s serve-cloud sustains for 1 and 4 concurrent clients."""
    from costeer.engine.cloud import RemoteCloud

    with serve_cloud_process(engine.cloud.name, top_k, engine.device.lm.precision) as url:
        lm = engine.device.lm
        remote = CoSteerEngine(RemoteCloud(url, lm.tokenizer, lm.vocab_size, lm.eos_ids, top_k=top_k).connect(),
                               DeviceLM(lm))
        params, sampling = SteeringParams(), Sampling(max_new_tokens=tokens)
        runs = {"in_process": [], "http": []}
        for _ in range(repeats):
            for prompt, context in BENCH_PROMPTS:
                m = [{"role": "user", "content": prompt}]
                runs["in_process"].append(_timed(engine.stream(m, context, DecodeSpec("steered", params, sampling)))[1])
                runs["http"].append(_timed(remote.stream(m, context, DecodeSpec("steered", params, sampling)))[1])
        cloud_throughput(url, lm.tokenizer, 1, 4)  # warm-up
        throughput = {f"serve_cloud_requests_per_s_{c}_clients": cloud_throughput(url, lm.tokenizer, c, 16)["requests_per_s"]
                      for c in (1, 4)}
    ip, http = statistics.median(runs["in_process"]), statistics.median(runs["http"])
    return {"in_process_steered_ms_per_token": round(ip, 2), "http_steered_ms_per_token": round(http, 2),
            "http_over_in_process": round(http / ip, 3), "http_top_k": top_k, **throughput}


def gate_bench(engine: CoSteerEngine, tokens: int = 64, repeats: int = 2, threshold: float = 0.1,
               patience: int = 2) -> dict:
    """Steered decoding with and without the confidence gate: time per token and skipped passes."""
    from costeer.engine.decoding import ConfidenceGate

    gate = ConfidenceGate(threshold, patience)
    params, sampling = SteeringParams(), Sampling(max_new_tokens=tokens)
    runs = {"ungated": [], "gated": []}
    skipped = steps = 0
    for _ in range(repeats):
        for prompt, context in BENCH_PROMPTS:
            m = [{"role": "user", "content": prompt}]
            runs["ungated"].append(_timed(engine.stream(m, context, DecodeSpec("steered", params, sampling)))[1])
            events = []

            def record(it):
                for ev in it:
                    events.append(ev)
                    yield ev
            runs["gated"].append(_timed(record(engine.stream(m, context, DecodeSpec("steered", params, sampling, gate=gate))))[1])
            skipped += sum(ev.device_skipped for ev in events)
            steps += len(events)
    ungated, gated = statistics.median(runs["ungated"]), statistics.median(runs["gated"])
    return {"gate_threshold": threshold, "gate_patience": patience, "gated_steered_ms_per_token": round(gated, 2),
            "gate_device_skip_share": round(skipped / max(1, steps), 3),
            "gate_speedup_over_ungated": round(ungated / gated, 3)}


def defences_bench(engine: CoSteerEngine, tokens: int = 64, repeats: int = 2) -> dict:
    """Steered decoding plain, with a deny-list (the words of the bench contexts) and with noise
    (tau 1, sigma 0.3), interleaved: what the defences cost per token."""
    from costeer.engine.decoding import Defences
    from costeer.evaluation.privacy import deny_token_ids

    deny = deny_token_ids(engine.cloud.tokenizer, [w for _, c in BENCH_PROMPTS for w in c.split()])
    settings = {"plain": None, "deny": Defences(deny_ids=deny), "noise": Defences(tau=1.0, sigma=0.3, seed=0)}
    params, sampling = SteeringParams(), Sampling(max_new_tokens=tokens)
    runs = {k: [] for k in settings}
    for _ in range(repeats):
        for prompt, context in BENCH_PROMPTS:
            m = [{"role": "user", "content": prompt}]
            for k, d in settings.items():
                runs[k].append(_timed(engine.stream(m, context, DecodeSpec("steered", params, sampling, defences=d)))[1])
    ms = {k: statistics.median(v) for k, v in runs.items()}
    return {"deny_list_ids": len(deny), "deny_steered_ms_per_token": round(ms["deny"], 2),
            "noise_steered_ms_per_token": round(ms["noise"], 2),
            "deny_over_plain_steered": round(ms["deny"] / ms["plain"], 3),
            "noise_over_plain_steered": round(ms["noise"] / ms["plain"], 3)}


def cloud_throughput(url: str, tokenizer, clients: int = 1, steps: int = 16, seconds_cap: float = 120.0) -> dict:
    """Requests per second a cloud server sustains for `clients` concurrent CoSteer-shaped clients:
    each opens two rows (side by side), which part at the first token, and then extends both by
    one token per request."""
    import threading

    import httpx

    done, errors, lock = [0], [0], threading.Lock()
    deadline = time.perf_counter() + seconds_cap

    def client(n: int):
        prompt = build_prompts(tokenizer, [{"role": "user", "content": f"{BENCH_PROMPTS[n % 2][0]} (client {n})"}], "")[0]
        rows = [list(prompt), list(prompt)]
        with httpx.Client(timeout=120) as http:
            for _ in range(steps + 1):
                if time.perf_counter() > deadline:
                    return
                r = http.post(url + "/v1/completions", json={"prompt": rows, "max_tokens": 1, "logprobs": 20,
                                                             "temperature": 0, "return_tokens_as_token_ids": True})
                with lock:
                    done[0] += r.status_code == 200
                    errors[0] += r.status_code != 200
                if r.status_code != 200:
                    return
                for i, (row, choice) in enumerate(zip(rows, sorted(r.json()["choices"], key=lambda c: c["index"]))):
                    top = sorted(choice["logprobs"]["top_logprobs"][0].items(), key=lambda kv: -kv[1])
                    pick = top[1 if i == 1 and len(row) == len(prompt) else 0][0]  # the rows part, as steering does
                    row.append(int(pick.split(":", 1)[1]))

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {"clients": clients, "requests": done[0], "errors": errors[0], "seconds": round(elapsed, 2),
            "requests_per_s": round(done[0] / elapsed, 2)}


def llama_server_binary() -> str | None:
    """LLAMA_SERVER, or the one scripts/real_servers.sh built into the cache."""
    import glob
    import os

    from costeer.models.load import cache_dir

    found = os.environ.get("LLAMA_SERVER") or next(iter(sorted(glob.glob(str(cache_dir() / "servers" / "llama-server-*"
                                                                          / "llama-server")))), None)
    return found if found and os.path.exists(found) else None


def llama_server_anchor(tokens: int = 64, repeats: int = 3) -> dict:
    """llama.cpp's own decode speed on the bundled GGUF, as a figure that does not depend on our code
    (its `timings.predicted_per_token_ms`, one slot, 2 threads)."""
    import subprocess

    import httpx

    from costeer.models.load import bundled_gguf_path

    binary = llama_server_binary()
    if binary is None:
        return {"llama_server_ms_per_token": "not measured: no llama-server (scripts/real_servers.sh llama builds it)"}
    port = _free_port()
    proc = subprocess.Popen([binary, "-m", str(bundled_gguf_path()), "--host", "127.0.0.1", "--port", str(port),
                             "-c", "2048", "-np", "1", "-t", str(torch.get_num_threads()), "--no-webui"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, proc, "llama-server")
        per = []
        for i in range(repeats + 1):
            r = httpx.post(url + "/completion", json={"prompt": BENCH_PROMPTS[i % 2][0], "n_predict": tokens,
                                                      "temperature": 0, "cache_prompt": False, "ignore_eos": True},
                           timeout=300).json()
            if i:  # the first run warms up
                per.append(r["timings"]["predicted_per_token_ms"])
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    return {"llama_server_ms_per_token": round(statistics.median(per), 2), "llama_server_binary": binary}
