"""One source for the model arguments and for loading an engine: the CLI and the app share it."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from costeer.models.load import DEFAULT_MODEL, DTYPES, PRECISIONS, ModelLoadError, load_model, load_pair

TOP_K_RANGE = (1, 1000)


def bounded_int(name: str, lo: int, hi: int):
    """An argparse type: an integer in [lo, hi], refused in words naming the option."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer in [{lo}, {hi}], got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be an integer in [{lo}, {hi}], got {value}")
        return value
    return parse


def text_arg(name: str):
    """An argparse type: text the shell could decode (bytes that are not UTF-8 arrive as lone
    surrogates, which no tokenizer takes)."""
    def parse(text):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise argparse.ArgumentTypeError(f"{name} is not valid UTF-8 text") from None
        return text
    return parse


def url_arg(name: str):
    """An argparse type: an http(s) URL httpx can parse (a typo such as "http://[::1" is one line)."""
    def parse(text):
        import httpx

        text_arg(name)(text)
        try:
            url = httpx.URL(text)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise argparse.ArgumentTypeError(f"not a URL ({exc})") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise argparse.ArgumentTypeError(f"give an http:// or https:// URL with a host, got {text[:80]!r}")
        return text
    return parse


def writable_file_problem(path: str | None) -> str | None:
    """Why `path` cannot take an output file, or None (also for None)."""
    if not path:
        return None
    p = Path(path)
    if p.is_dir():
        return f"{path} is a directory; give a file name"
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        return f"the folder {parent} does not exist"
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        return f"{path} cannot be written (no permission)"
    return None


def add_model_args(p: argparse.ArgumentParser, precision: str = "fp32"):
    """The model options. `precision` is the default of --precision: the app runs the fast path
    (auto); the measuring commands (eval, canary, bench, generate) default to the fp32 reference,
    so the figures the docs quote come back from the commands they quote."""
    p.add_argument("--cloud-model", default=os.environ.get("COSTEER_CLOUD_MODEL"),
                   help=f"hub id, local folder or .gguf for the cloud LLM (env COSTEER_CLOUD_MODEL; default {DEFAULT_MODEL})")
    p.add_argument("--local-model", default=os.environ.get("COSTEER_LOCAL_MODEL"),
                   help="hub id, local folder or .gguf for the on-device SLM (env COSTEER_LOCAL_MODEL; default: the cloud model)")
    p.add_argument("--cloud-url", default=os.environ.get("COSTEER_CLOUD_URL"), type=url_arg("--cloud-url"),
                   help="OpenAI-compatible cloud endpoint (vLLM, llama.cpp's llama-server, or serve-cloud), e.g. "
                        "http://127.0.0.1:8001/v1 (env COSTEER_CLOUD_URL); the cloud model then runs there")
    p.add_argument("--top-k", type=bounded_int("--top-k", *TOP_K_RANGE), default=20,
                   help="with --cloud-url: how many next-token log-probs the cloud returns (vLLM's default cap is 20)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--precision", default=precision, choices=PRECISIONS,
                   help=f"the Linear weights on the CPU: fp32 (the exact reference), int8 or int4 (torch's kernels, "
                        f"1.6-1.8x faster on a 2-core EPYC; docs/benchmarks.md), or auto (int4 or int8 where they "
                        f"measure clearly faster at load); default {precision}")
    p.add_argument("--allow-downloads", action="store_true",
                   help="let transformers fetch a hub model (off by default: nothing leaves this machine)")


def load_engine(args, stock_linear: bool = False):
    """The engine the arguments describe; raises ModelLoadError or CloudError."""
    from costeer.engine.cloud import RemoteCloud
    from costeer.engine.decoding import CoSteerEngine, build_engine
    from costeer.engine.device import DeviceLM

    if getattr(args, "cloud_url", None):
        local = load_model(args.local_model, args.device, args.dtype, stock_linear, args.precision)
        cloud = RemoteCloud(args.cloud_url, local.tokenizer, local.vocab_size, local.eos_ids, top_k=args.top_k,
                            device=local.device).connect()
        return CoSteerEngine(cloud, DeviceLM(local))
    cloud, local = load_pair(args.cloud_model, args.local_model or args.cloud_model, args.device, args.dtype,
                             stock_linear, args.precision)
    return build_engine(cloud, local)


def load_engine_or_exit(args, stock_linear: bool = False, prog: str = "costeer"):
    """`load_engine`, with a failure printed as one line and exit 1; says plainly when one model
    plays both roles."""
    from costeer.engine.cloud import CloudError

    try:
        engine = load_engine(args, stock_linear)
    except ModelLoadError as exc:
        print(f"{prog}: error: model load failed: {exc}", file=sys.stderr)
        sys.exit(1)
    except CloudError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    lm = engine.device.lm
    how = f", picked by timing {lm.kernel_ms} ms" if lm.kernel_ms else ""
    print(f"{prog}: cloud: {engine.cloud.name} ({engine.cloud.where}); device: {engine.device.name} "
          f"({lm.precision} weights{how})", file=sys.stderr)
    if engine.vocab_map is not None:
        print(f"{prog}: cloud and device tokenizers differ; steering on their intersection: "
              f"{engine.vocab_map.describe()}; it holds {100 * probe_mass(engine):.1f}% of the cloud's "
              "next-token probability on a probe prompt", file=sys.stderr)
    if engine.same_model:
        print(f"{prog}: note: one model ({engine.cloud.name}) plays both roles, cloud LLM and on-device SLM. "
              "This is a stand-in for a real pair; pass --cloud-model/--local-model for one.", file=sys.stderr)
    return engine


def probe_mass(engine) -> float:
    """Share of the cloud's next-token mass on shared tokens, for a short probe conversation."""
    from costeer.engine.prompts import conversation_ids

    ids = conversation_ids(engine.cloud.tokenizer, [{"role": "user", "content": "Describe a good weekend."}])
    rows = engine.cloud.open([ids])
    return engine.vocab_map.mass_covered(rows.logprobs[0])
