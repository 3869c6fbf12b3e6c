"""Command line: `python -m costeer generate|bench`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .models import DEFAULT_MODEL, DTYPES, ModelLoadError, load_pair, set_offline
from .policy import T_MAX, SteeringParams, effective_strength


def _add_model_args(p: argparse.ArgumentParser):
    p.add_argument("--cloud-model", default=os.environ.get("COSTEER_CLOUD_MODEL"),
                   help=f"hub id, local folder or .gguf for the cloud LLM (env COSTEER_CLOUD_MODEL; default {DEFAULT_MODEL})")
    p.add_argument("--local-model", default=os.environ.get("COSTEER_LOCAL_MODEL"),
                   help="hub id, local folder or .gguf for the on-device SLM (env COSTEER_LOCAL_MODEL; default: the cloud model)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--allow-downloads", action="store_true",
                   help="let transformers fetch a hub model (off by default: nothing leaves this machine)")


def load_engine_or_exit(args, stock_linear: bool = False):
    """Load both models; a failure prints one line and exits 1."""
    from .decoding import CoSteerEngine

    try:
        cloud, local = load_pair(args.cloud_model, args.local_model or args.cloud_model, args.device, args.dtype, stock_linear)
    except ModelLoadError as exc:
        print(f"costeer: error: model load failed: {exc}", file=sys.stderr)
        sys.exit(1)
    engine = CoSteerEngine(cloud, local)
    if engine.same_model:
        print(f"costeer: note: one model ({cloud.name}) plays both roles, cloud LLM and on-device SLM. "
              "This is a stand-in for a real pair; pass --cloud-model/--local-model for one.", file=sys.stderr)
    return engine


def _positive_int(name, lo, hi):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer in [{lo}, {hi}], got {text!r}")
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be an integer in [{lo}, {hi}], got {value}")
        return value
    return parse


def cmd_generate(args, parser):
    from .decoding import CloudTranscript, Sampling

    try:
        params = SteeringParams(T=args.T, eta=args.eta, lam=args.lam, alpha=args.alpha, beta=args.beta)
        sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, seed=args.seed, stop=tuple(args.stop or ()))
    except ValueError as exc:
        parser.error(str(exc))
    context = args.context or ""
    if args.context_file:
        try:
            context = Path(args.context_file).read_text(encoding="utf-8")
        except OSError as exc:
            parser.error(f"--context-file: cannot read {args.context_file}: {exc.strerror}")
    engine = load_engine_or_exit(args)
    messages = [{"role": "user", "content": args.prompt}]
    texts = {"unsteered": "", "steered": ""}
    transcript = CloudTranscript()
    for ev in engine.stream(messages, context, "side_by_side", params, sampling, transcript):
        texts[ev.stream] += ev.text
    C = effective_strength(params)
    if args.json:
        print(json.dumps({"unsteered": texts["unsteered"], "steered": texts["steered"], "effective_strength": C,
                          "params": params.as_dict(), "cloud_model": engine.cloud.name,
                          "local_model": engine.local.name, "same_model": engine.same_model,
                          "seed": sampling.seed}, ensure_ascii=False))
    else:
        print(f"== unsteered (cloud model alone, no personal context) ==\n{texts['unsteered']}\n")
        print(f"== steered (CoSteer, effective strength C = {C:.3f}) ==\n{texts['steered']}")


def cmd_bench(args, parser):
    from .bench import run_bench

    engine = load_engine_or_exit(args, stock_linear=args.stock_linear)
    result = run_bench(engine, tokens=args.tokens, repeats=args.repeats)
    result["stock_linear"] = args.stock_linear
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:40s} {v}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m costeer", description="CoSteer decoding-time personalization")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="print the unsteered and the steered answer to one prompt")
    g.add_argument("--prompt", required=True)
    ctx = g.add_mutually_exclusive_group()
    ctx.add_argument("--context", help="personal context (stays on the device)")
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
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--json", action="store_true", help="one JSON object on stdout")
    _add_model_args(g)
    g.set_defaults(func=cmd_generate, subparser=g)

    b = sub.add_parser("bench", help="per-token decode time of each mode, side by side")
    b.add_argument("--tokens", type=_positive_int("tokens", 2, 1024), default=64)
    b.add_argument("--repeats", type=_positive_int("repeats", 1, 50), default=3)
    b.add_argument("--stock-linear", action="store_true", help="measure with torch's stock Linear layers")
    b.add_argument("--json", action="store_true")
    _add_model_args(b)
    b.set_defaults(func=cmd_bench, subparser=b)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    set_offline(getattr(args, "allow_downloads", False))
    args.func(args, args.subparser)


if __name__ == "__main__":
    main()
