"""Command line: `python -m costeer generate|bench`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from costeer.engine.spec import MAX_SPECULATE, DecodeSpec
from costeer.models.load import DEFAULT_MODEL, DTYPES, PRECISIONS, ModelLoadError, load_model, set_offline
from costeer.models.options import add_model_args as _add_model_args
from costeer.models.options import bounded_int as _positive_int
from costeer.models.options import load_engine_or_exit
from costeer.models.options import text_arg, writable_file_problem
from costeer.steering.policy import T_MAX, SteeringParams, effective_strength


def add_decoding_args(p: argparse.ArgumentParser):
    """Repetition control, as transformers' generate defines it (costeer/engine/sampling.py); off by default,
    which is the paper's plain decoding."""
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off (default); e.g. 1.1")
    p.add_argument("--no-repeat-ngram-size", type=int, default=0, help="0 = off (default); e.g. 4")


def decoding(args, max_new_tokens: int):
    from costeer.engine.sampling import Sampling

    return Sampling(max_new_tokens=max_new_tokens, repetition_penalty=args.repetition_penalty,
                    no_repeat_ngram_size=args.no_repeat_ngram_size)


def cmd_generate(args, parser):
    from costeer.engine.decoding import Defences

    noise, gate, params, sampling = _generate_settings(args, parser)
    context = _context_arg(args, parser)
    engine = load_engine_or_exit(args)
    defences = noise
    if args.deny:
        from costeer.evaluation.privacy import deny_token_ids

        defences = Defences(deny_token_ids(engine.cloud.tokenizer, args.deny), noise.tau, noise.sigma, noise.seed)
    summary, transcript = _generate(engine, args, parser, context, params, sampling, gate, defences)
    if args.json:
        print(json.dumps(_generate_json(engine, args, params, sampling, defences, summary, transcript),
                         ensure_ascii=False))
    else:
        C = effective_strength(params)
        print(f"== unsteered (cloud model alone, no personal context) ==\n{summary['unsteered'].shown}\n")
        print(f"== steered (CoSteer, effective strength C = {C:.3f}) ==\n{summary['steered'].shown}")
        if args.speculate > 1:
            st = summary["steered"].speculation
            print(f"\n(speculate {args.speculate}: {st.rounds} round trips for {st.tokens} steered tokens; "
                  f"{st.accepted} of {st.drafted} drafts kept; {st.rejected} drafted tokens the cloud saw and the "
                  f"answer did not keep)", file=sys.stderr)


def _generate_settings(args, parser):
    """The noise, the gate, the steering and the decoding, each checked (a bad value exits 2 naming it)."""
    from costeer.engine.decoding import ConfidenceGate, Defences, Sampling

    try:
        noise = Defences(tau=args.tau, sigma=args.sigma, seed=args.seed)  # the deny-list's ids need the tokenizer
        gate = ConfidenceGate(args.gate, args.gate_patience, args.gate_mode) if args.gate is not None else None
        params = SteeringParams(T=args.T, eta=args.eta, lam=args.lam, alpha=args.alpha, beta=args.beta)
        sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, seed=args.seed, stop=tuple(args.stop or ()),
                            repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size)
    except ValueError as exc:
        parser.error(str(exc))
    return noise, gate, params, sampling


def _context_arg(args, parser) -> str:
    if not args.context_file:
        return args.context or ""
    try:
        return Path(args.context_file).read_text(encoding="utf-8")
    except OSError as exc:
        parser.error(f"--context-file: cannot read {args.context_file}: {exc.strerror}")
    except UnicodeDecodeError as exc:
        parser.error(f"--context-file: {args.context_file} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                     f"at offset {exc.start})")


def _generate(engine, args, parser, context, params, sampling, gate, defences):
    """Both answers side by side, folded (summary.ReplySummary), and the transcript of what the
    cloud received."""
    from costeer.engine.cloud import CloudError
    from costeer.engine.decoding import CloudTranscript
    from costeer.engine.summary import ReplySummary

    transcript = CloudTranscript()
    try:
        spec = DecodeSpec("side_by_side", params, sampling, gate=gate, defences=defences, speculate=args.speculate,
                          overlap=args.overlap)
        summary = ReplySummary.of(engine.stream([{"role": "user", "content": args.prompt}], context, spec, transcript))
    except ValueError as exc:  # the request does not fit a model's context
        parser.error(str(exc))
    except CloudError as exc:
        print(f"costeer: error: {exc}", file=sys.stderr)
        sys.exit(1)
    return summary, transcript


def _generate_json(engine, args, params, sampling, defences, summary, transcript) -> dict:
    from costeer.steering.defences import sent_deny_ids

    steered = summary["steered"]
    return {"unsteered": summary["unsteered"].text, "steered": steered.text, "shown": summary.shown(),
            "finish": {s: v.finish for s, v in summary.streams.items()},
            "effective_strength": effective_strength(params), "params": params.as_dict(),
            "sampling": sampling.as_dict(), "latency": summary.latency.summary(), "cloud_model": engine.cloud.name,
            "local_model": engine.device.name, "same_model": engine.same_model, "seed": sampling.seed,
            "device_skipped": steered.device_skipped, "steered_steps": steered.tokens,
            "defences": {"sigma": defences.sigma, "tau": defences.tau, "deny_ids": len(defences.deny_ids),
                         "deny_margin_max": steered.deny_margin if defences.deny_ids else None,
                         "deny_ids_sent": sent_deny_ids(transcript, "steered", defences.deny_ids)},
            "speculate": args.speculate, "overlap": args.overlap,
            "speculation": {s: v.speculation.as_dict() for s, v in summary.streams.items()}
            if args.speculate > 1 or args.overlap
            else None,
            "rejected_drafts": {s: tokenizer_decode(engine, ids) for s, ids in transcript.drafts.items()}}


def tokenizer_decode(engine, ids: list[int]) -> dict:
    """Rejected draft tokens as the cloud saw them: their count and each round's text."""
    return {"count": sum(map(len, ids)), "texts": [engine.cloud.tokenizer.decode(r, skip_special_tokens=True) for r in ids]}


def _int_list(name: str, lo: int, hi: int):
    def parse(text):
        try:
            values = [int(x) for x in str(text).split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be comma-separated integers in [{lo}, {hi}], got {text!r}")
        if not values or any(not lo <= v <= hi for v in values):
            raise argparse.ArgumentTypeError(f"{name} must be comma-separated integers in [{lo}, {hi}], got {text!r}")
        return values
    return parse


def cmd_remote_bench(args, parser):
    from costeer.engine.cloud import CloudError
    from costeer.bench.remote import remote_bench, table_markdown

    rtts, ks = args.rtt_ms, args.speculate  # argparse applies `type` to the string defaults too
    try:
        lm = load_model(args.local_model or args.cloud_model, args.device, args.dtype, precision=args.precision)
    except ModelLoadError as exc:
        print(f"costeer: error: {exc}", file=sys.stderr)
        sys.exit(2)
    if not args.cloud_url:
        print(f"costeer: bench --remote: serve-cloud with {lm.name} plays the cloud and the device: one model "
              "in both roles, so the device's draft is nearly the cloud's own choice and acceptance is near its ceiling", file=sys.stderr)
    try:
        result = remote_bench(lm, args.cloud_url, rtts, ks, tokens=args.tokens, repeats=args.repeats, top_k=args.top_k,
                              progress=None if args.json else lambda m: print(m, file=sys.stderr))
    except CloudError as exc:
        print(f"costeer: error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(result) if args.json else table_markdown(result["remote_table"]))


def cmd_bench(args, parser):
    from costeer.bench.speed import run_bench

    if args.remote:
        return cmd_remote_bench(args, parser)
    engine = load_engine_or_exit(args, stock_linear=args.stock_linear)
    if args.project:
        return cmd_project(engine, args)
    from costeer.bench.speed import defences_bench, gate_bench, http_vs_in_process, topk_agreement

    try:
        sampling = decoding(args, args.tokens)
    except ValueError as exc:
        parser.error(str(exc))
    result = run_bench(engine, tokens=args.tokens, repeats=args.repeats, sampling=sampling)
    result["stock_linear"] = args.stock_linear
    if engine.same_model and engine.device.lm.precision != "fp32":
        from costeer.bench.speed import fp32_reference

        result.update(fp32_reference(engine, result, tokens=args.tokens, repeats=args.repeats, sampling=sampling))
    if engine.same_model and not args.no_cloud:
        from costeer.bench.speed import llama_server_anchor

        result.update(llama_server_anchor(tokens=args.tokens))
        if isinstance(result["llama_server_ms_per_token"], float):
            result["plain_over_llama_server"] = round(result["plain_ms_per_token"] / result["llama_server_ms_per_token"], 3)
    result.update(gate_bench(engine, tokens=args.tokens, repeats=max(1, args.repeats - 1)))
    result.update(defences_bench(engine, tokens=args.tokens, repeats=max(1, args.repeats - 1)))
    if not args.no_cloud and engine.same_model:  # the figures below compare against the in-process cloud
        result.update(topk_agreement(engine, tokens=args.tokens))
        result.update(http_vs_in_process(engine, tokens=args.tokens, repeats=max(1, args.repeats - 1)))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:40s} {v}")


def cmd_project(engine, args):
    """Measure this machine's device on one side-by-side reply, then project real pairs from it."""
    from costeer.bench.machine import cpu_name
    from costeer.bench.projection import measured_from, projection_table, projections
    from costeer.engine.summary import ReplySummary

    messages = [{"role": "user", "content": "Suggest a plan for my Friday evening."}]
    context = "- Strict vegetarian living in Osaka. Loves jazz and quiet places."
    spec = DecodeSpec("side_by_side", sampling=decoding(args, args.tokens))
    engine.generate(messages, context, spec)  # a warm-up: the first pass pays for allocations
    latency = ReplySummary.of(engine.stream(messages, context, spec)).latency.summary()
    measured = measured_from(latency, engine.device.lm.model, engine.same_model, cpu_name())
    rows = projections(measured)
    if args.json:
        from dataclasses import asdict

        print(json.dumps({"measured": asdict(measured), "projections": rows}))
    else:
        print(projection_table(measured, rows))


def cmd_eval(args, parser):
    from costeer.evaluation.eval import BASE_METHODS, PRIVACY_SWEEPS, evaluate, load_rows, method_spec, plot_sweep, sweep_methods, table

    try:
        rows = load_rows(args.data, args.limit)
        methods = list(args.methods or [])
        sweep = sweep_methods(args.sweep) if args.sweep else None
        privacy = args.privacy or bool(sweep and sweep[0] in PRIVACY_SWEEPS)
        if sweep:
            if sweep[0] in PRIVACY_SWEEPS and not methods:
                methods = ["llm", "costeer"]  # the curve's two ends: the cloud alone, and no noise
            methods += [m for m in sweep[2] if m not in methods]
        methods = methods or list(BASE_METHODS)
        for m in methods:
            method_spec(m)  # every name checked before the models load
        sampling = decoding(args, args.max_new_tokens)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    if not rows:
        parser.error(f"--data {args.data}: no rows")
    if args.cloud_url and "llm_ctx" in methods and not args.allow_context_to_cloud:
        parser.error("the llm_ctx baseline gives the cloud model the personal context itself, and with --cloud-url "
                     "that sends personal data to the cloud server; drop llm_ctx from --methods, or pass "
                     "--allow-context-to-cloud if the data may go there")
    plot = args.plot or (f"privacy_{sweep[0]}.png" if sweep and privacy and sweep[0] in PRIVACY_SWEEPS
                         else f"sweep_{sweep[0]}.png" if sweep else None)
    for option, path in (("--out", args.out), ("--plot", plot)):
        problem = writable_file_problem(path)
        if problem:  # checked before the work, not after an hour of it
            parser.error(f"{option}: {problem}")
    engine = load_engine_or_exit(args)
    summary, results = evaluate(engine, rows, methods, args.max_new_tokens, args.out, progress=not args.no_progress,
                                sampling=sampling, privacy=privacy)
    result = {"methods": summary, "rows": len(rows), "cloud_model": engine.cloud.name,
              "local_model": engine.device.name, "meteor": "not computed: needs WordNet data, not available offline"}
    if privacy:
        from costeer.evaluation.audit import attacker_model, plot_privacy, privacy_table, summarize_privacy

        result["privacy"] = summarize_privacy(results, methods)
        result["attacker_model"] = attacker_model(engine)[1]
        from costeer.evaluation.privacy import ZIPF_BELOW

        result["zipf_below"] = ZIPF_BELOW
    if plot and privacy and (not sweep or sweep[0] in PRIVACY_SWEEPS):
        plot_privacy(result["privacy"], summary, plot)
        result["privacy_plot"] = plot
        print(f"costeer: privacy-utility plot written to {plot}", file=sys.stderr)
    elif sweep:
        plot_sweep(summary, sweep[0], sweep[1], sweep[2], plot)
        result["sweep_plot"] = plot
        print(f"costeer: sweep plot written to {plot}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        print(table(summary))
        if privacy:
            print()
            print(privacy_table(result["privacy"], summary))
            print(f"attacker: {result['attacker_model']}")


def cmd_retrieval(args, parser):
    from costeer.evaluation.retrieval import evaluate_retrieval, retrieval_table

    try:
        result = evaluate_retrieval(args.set)
    except (OSError, ValueError) as exc:
        parser.error(f"--set {args.set}: {exc}")
    print(json.dumps(result) if args.json else retrieval_table(result))


def cmd_canary(args, parser):
    from costeer.evaluation.canary import canary_table, run_canaries

    engine = load_engine_or_exit(args)
    progress = None if args.no_progress else (lambda m: print(m, file=sys.stderr, flush=True))
    result = run_canaries(engine, args.trials, args.max_new_tokens, args.seed, progress)
    print(json.dumps(result) if args.json else canary_table(result))


def cmd_serve_cloud(args, parser):
    from costeer.serving.server import check_audit_log, serve

    try:
        check_audit_log(args.audit_log)
    except OSError as exc:
        parser.error(f"--audit-log: cannot write {args.audit_log}: {exc.strerror or exc}")
    try:
        lm = load_model(args.model, args.device, args.dtype, precision=args.precision)
    except ModelLoadError as exc:
        print(f"costeer: error: model load failed: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"costeer: serving {lm.name} on http://{args.host}:{args.port}/v1"
          + (f", auditing requests to {args.audit_log}" if args.audit_log else ""), file=sys.stderr, flush=True)
    serve(lm, args.host, args.port, args.audit_log, args.max_logprobs, args.max_rows, args.max_request_tokens,
          args.cache_mb)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m costeer", description="CoSteer decoding-time personalization")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="print the unsteered and the steered answer to one prompt")
    g.add_argument("--prompt", required=True, type=text_arg("--prompt"))
    ctx = g.add_mutually_exclusive_group()
    ctx.add_argument("--context", type=text_arg("--context"), help="personal context (stays on the device)")
    ctx.add_argument("--context-file", help="read the personal context from a file")
    d = SteeringParams()
    g.add_argument("--T", type=_positive_int("T", 1, T_MAX), default=d.T)
    g.add_argument("--eta", type=float, default=d.eta)
    g.add_argument("--lam", type=float, default=d.lam)
    g.add_argument("--alpha", type=float, default=d.alpha)
    g.add_argument("--beta", type=float, default=d.beta)
    g.add_argument("--max-new-tokens", type=_positive_int("max-new-tokens", 1, 4096), default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", type=text_arg("--stop"), help="stop string (repeatable)")
    g.add_argument("--sigma", type=float, default=0.0,
                   help="noise: Gaussian noise of this scale added to the delta per step (seeded by --seed; not DP)")
    g.add_argument("--tau", type=float, default=None, help="noise: clip the delta to [-tau, tau] first")
    g.add_argument("--deny", action="append", type=text_arg("--deny"), metavar="WORDS",
                   help="deny-list: steering never makes these words' tokens likelier than the cloud alone (repeatable)")
    g.add_argument("--gate", type=float, default=None, metavar="THRESHOLD",
                   help="confidence gate: skip the device passes while the cloud's top probability >= 1 - THRESHOLD")
    g.add_argument("--gate-patience", type=_positive_int("--gate-patience", 1, 100), default=3,
                   help="consecutive confident steps before the gate skips (default 3, as AdaCoSteer)")
    g.add_argument("--gate-mode", choices=("paper", "reopen"), default="paper",
                   help="paper (default): once the gate closes, fusion stays off for the rest of the answer, as the "
                        "official AdaCoSteer does; reopen: steering resumes when the cloud is unsure again")
    g.add_argument("--speculate", type=_positive_int("--speculate", 1, MAX_SPECULATE), default=1, metavar="K",
                   help="up to K tokens per cloud round trip: the device drafts K-1, the cloud scores them in one "
                        "request (1 = off, the default; greedy output is identical). Rejected drafts are tokens "
                        "the cloud sees that plain CoSteer never sends: they are counted")
    g.add_argument("--overlap", action="store_true",
                   help="run the device's passes while the cloud request is in flight (a remote cloud)")
    add_decoding_args(g)
    g.add_argument("--json", action="store_true", help="one JSON object on stdout")
    _add_model_args(g)
    g.set_defaults(func=cmd_generate, subparser=g)

    b = sub.add_parser("bench", help="per-token decode time of each mode, side by side")
    b.add_argument("--tokens", type=_positive_int("tokens", 2, 1024), default=64)
    b.add_argument("--repeats", type=_positive_int("repeats", 1, 50), default=3)
    b.add_argument("--stock-linear", action="store_true", help="measure with torch's stock Linear layers")
    b.add_argument("--no-cloud", action="store_true", help="skip the top-k agreement and loopback-HTTP figures")
    b.add_argument("--project", action="store_true",
                   help="only 'will it run on my PC?': measure the device here, project real pairs (inputs stated)")
    b.add_argument("--remote", action="store_true",
                   help="only the remote-decoding table: per-token, overlapped and speculative decoding at simulated "
                        "round-trip times (against serve-cloud started here, or --cloud-url)")
    b.add_argument("--rtt-ms", type=_int_list("--rtt-ms", 0, 2000), default="0,25,50,100",
                   help="with --remote: the simulated round-trip times, comma-separated (default 0,25,50,100)")
    b.add_argument("--speculate", type=_int_list("--speculate", 2, MAX_SPECULATE), default="2,4,8",
                   help="with --remote: the K values to measure (default 2,4,8)")
    add_decoding_args(b)
    b.add_argument("--json", action="store_true")
    _add_model_args(b)
    b.set_defaults(func=cmd_bench, subparser=b)

    e = sub.add_parser("eval", help="compare llm, slm_ctx, llm_ctx and CoSteer against references")
    e.add_argument("--data", required=True, help="JSONL rows: id, query, profile, reference (or LongLaMP input/output/profile)")
    e.add_argument("--limit", type=_positive_int("limit", 1, 10**9))
    e.add_argument("--methods", nargs="+", help="llm slm_ctx llm_ctx costeer private costeer:T=..,eta=..,lam=.. costeer:private=M (default: the first four)")
    e.add_argument("--max-new-tokens", type=_positive_int("max-new-tokens", 1, 4096), default=128)
    e.add_argument("--sweep", help="run CoSteer over values of one parameter, e.g. lam=0.5,1,2,4 (T, eta, lam) or "
                   "sigma=0.1,0.3,1 / tau=1,2,4 (the noise defence: implies --privacy); writes a plot")
    e.add_argument("--privacy", action="store_true",
                   help="also measure what the cloud could learn: exposure of personal terms, and a persona-guessing "
                        "attacker (needs rows with a `user` field, two users or more)")
    e.add_argument("--plot", help="where the plot goes (default sweep_<param>.png, privacy_<param>.png for sigma/tau)")
    e.add_argument("--out", help="per-row results JSONL; a rerun resumes, skipping (id, method) pairs already there")
    add_decoding_args(e)
    e.add_argument("--json", action="store_true")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--allow-context-to-cloud", action="store_true",
                   help="with --cloud-url: let the llm_ctx baseline send the personal context to the cloud server")
    _add_model_args(e)
    e.set_defaults(func=cmd_eval, subparser=e)

    r = sub.add_parser("retrieval", help="recall@k of the personal context's retrieval on a labelled set")
    r.add_argument("--set", default=str(Path(__file__).resolve().parents[1] / "assets" / "eval" / "retrieval.jsonl"),
                   help="JSONL rows: persona (file), message, relevant (entry titles); default: the shipped set")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_retrieval, subparser=r)

    k = sub.add_parser("canary", help="how often a made-up code name in the context reaches the cloud, per defence")
    k.add_argument("--trials", type=_positive_int("--trials", 1, 500), default=20, help="canaries per setting (1..500)")
    k.add_argument("--max-new-tokens", type=_positive_int("--max-new-tokens", 1, 512), default=32,
                   help="answer length (1..512)")
    k.add_argument("--seed", type=_positive_int("--seed", 0, 2**31 - 1), default=0, help="draws the canaries")
    k.add_argument("--json", action="store_true")
    k.add_argument("--no-progress", action="store_true")
    _add_model_args(k)
    k.set_defaults(func=cmd_canary, subparser=k)

    c = sub.add_parser("serve-cloud", help="serve a model as an OpenAI-compatible cloud endpoint with top-k logprobs")
    c.add_argument("--model", default=os.environ.get("COSTEER_CLOUD_MODEL"), help=f"default {DEFAULT_MODEL}")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=_positive_int("port", 1, 65535), default=8001)
    c.add_argument("--audit-log", help="append every request body to this JSONL file")
    c.add_argument("--max-logprobs", type=_positive_int("max-logprobs", 1, 100000), default=20,
                   help="largest `logprobs` a request may ask for (vLLM's default cap is 20)")
    c.add_argument("--max-rows", type=_positive_int("--max-rows", 1, 256), default=32,
                   help="most prompts in one request")
    c.add_argument("--max-request-tokens", type=_positive_int("--max-request-tokens", 1, 10**6), default=16384,
                   help="most tokens one request may make the server process (prompts + max_tokens per row)")
    c.add_argument("--cache-mb", type=_positive_int("--cache-mb", 1, 10**6), default=1024,
                   help="memory for the KV caches of recent requests, in MiB")
    c.add_argument("--device", default="cpu")
    c.add_argument("--dtype", default="float32", choices=DTYPES)
    c.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="the Linear weights: fp32 (default), int8, int4 or auto (models/quantized.py)")
    c.add_argument("--allow-downloads", action="store_true")
    c.set_defaults(func=cmd_serve_cloud, subparser=c)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    set_offline(getattr(args, "allow_downloads", False))
    args.func(args, args.subparser)


if __name__ == "__main__":
    main()
