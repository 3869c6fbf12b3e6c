"""CoSteer Studio: the command line and the server. The pages are ui/page/ (the owner's) and
ui/study_page.py (the raters'); the handlers are ui/handlers.py and ui/studies.py.

    python app.py [--host 127.0.0.1] [--port 7860] [--db PATH] [--cloud-model ...] [--local-model ...] [--auth USER:PASS]

gradio and the handlers are imported inside functions, after `set_offline` has switched off
analytics, telemetry and the hub: those libraries read the switches at import time.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from costeer.models.options import add_model_args, bounded_int
from costeer.models.load import cache_dir, set_offline
from ui.limits import JOIN_BURST, JOIN_RATE

ASSETS = Path(__file__).resolve().parent / "assets"
MAX_UPLOAD = "5mb"  # imports larger than this are refused before they reach the handler


def build_app(studio, desk):
    """The owner's page (ui/page/: one module per tab, and the named API). The raters' page is
    ui/study_page.py."""
    from ui.page import build_owner_page

    return build_owner_page(studio, desk)


def log_refusals():
    """Refusals and bugs from the handlers go to stderr as one line each (ui/guard.py)."""
    import logging

    log = logging.getLogger("costeer.app")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("app: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def join_limit(text: str) -> tuple[int, float]:
    """--rater-joins BURST,RATE: an integer in [1, 100000] and a rate in (0, 10000] per second."""
    burst, _, rate = text.partition(",")
    try:
        burst, rate = int(burst), float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give BURST,RATE such as 600,100; got {text[:40]!r}") from None
    if not 1 <= burst <= 100_000 or not 0 < rate <= 10_000:
        raise argparse.ArgumentTypeError(f"BURST must be in [1, 100000] and RATE in (0, 10000], got {text[:40]!r}")
    return burst, rate


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="CoSteer Studio")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=bounded_int("--port", 1, 65535), default=7860)
    p.add_argument("--db", default=None, help="SQLite file (env COSTEER_DB; default ./data/costeer.db)")
    # --cloud-model, --local-model, --cloud-url, --top-k, --device, --dtype, --precision, --allow-downloads;
    # the app runs the fast path by default (--precision auto), the measuring commands fp32
    add_model_args(p, precision="auto")
    p.add_argument("--auth", default=None, help="USER:PASS required to open the app")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="allow a non-loopback --host without --auth (anyone on the network can read all histories)")
    p.add_argument("--raters-host", default=None,
                   help="also serve the raters' page alone (no owner page) on this address, e.g. 0.0.0.0 for "
                        "colleagues on your network; the owner's page stays on --host")
    p.add_argument("--raters-port", type=bounded_int("--raters-port", 1, 65535), default=7861,
                   help="the raters' server's port (default 7861)")
    p.add_argument("--raters-url", default=None,
                   help="the address raters open, when it is not http://RATERS_HOST:RATERS_PORT (a reverse proxy or "
                        "a tunnel you run in front of the raters' server); rater links are made with it")
    p.add_argument("--rater-joins", type=join_limit, default=(JOIN_BURST, JOIN_RATE), metavar="BURST,RATE",
                   help=f"queue joins one address may make on the raters' page at once, then per second "
                        f"(default {JOIN_BURST},{JOIN_RATE:g}: a dozen scripted raters on one address fit)")
    args = p.parse_args(argv)
    if args.auth and ":" not in args.auth:
        p.error("--auth must be USER:PASS")
    if not 1 <= args.port <= 65535:
        p.error(f"--port must be in [1, 65535], got {args.port}")
    if args.raters_url and not args.raters_host:
        p.error("--raters-url needs --raters-host: it names the address of the raters' own server")
    if args.raters_url and not args.raters_url.startswith(("http://", "https://")):
        p.error(f"--raters-url must start with http:// or https://, got {args.raters_url[:60]!r}")
    if args.raters_host and args.raters_host == args.host and args.raters_port == args.port:
        p.error("--raters-port must differ from --port on the same address")
    return args


def main(argv=None):
    args = parse_args(argv)
    set_offline(args.allow_downloads)
    from ui.security import bind_refusal, private_temp_dir

    refusal = bind_refusal(args.host, args.auth, args.insecure_no_auth)
    if refusal:
        print(f"app: error: {refusal}", file=sys.stderr)
        sys.exit(2)
    os.environ["GRADIO_TEMP_DIR"] = str(private_temp_dir(cache_dir()))

    from costeer.models.options import load_engine_or_exit
    from user_store import StoreError, UserStore

    engine = load_engine_or_exit(args, prog="app")  # a load failure prints one line and exits 1
    try:
        store = UserStore(args.db)
    except (StoreError, OSError) as exc:
        print(f"app: error: cannot open the database: {exc}", file=sys.stderr)
        sys.exit(1)
    read_only = store.writable_problem()
    if read_only:
        print(f"app: warning: {read_only} The app starts; nothing added in it will be saved.", file=sys.stderr)
    log_refusals()
    serve(args, engine, store, read_only)


def serve(args, engine, store, read_only):
    """Two pages on one server: the owner's at / (behind `--auth` when given) and the raters' at
    /study/ (link tokens, no password). A share link is not offered: it would put the owner's page
    on the internet."""
    import fastapi
    import gradio as gr
    import uvicorn

    from studies.pregenerate import Pregenerator
    from ui.access import Access, owner_gate
    from ui.handlers import Studio
    from ui.security import host_guard_middleware
    from ui.study_page import build_study_page
    from ui.studies import STUDY_PATH, StudyDesk

    studio = Studio(engine, store, read_only=read_only)
    pregen = Pregenerator(engine, store, studio.context_for, studio.defences_for)
    resumed = pregen.resume()
    if resumed:
        print(f"app: resuming the answers of study {', '.join(map(str, resumed))}", file=sys.stderr)
    desk = StudyDesk(store, pregen, engine.cloud.name, engine.device.name, raters_url=raters_url(args))
    owner, _, password = (args.auth or "").partition(":")
    access = Access(owner or None, open_to_all=args.insecure_no_auth and not args.auth)
    owner_page = owner_gate(build_app(studio, desk), access)
    owner_page.queue(default_concurrency_limit=2, max_size=64)
    study_page = build_study_page(desk)
    study_page.queue(default_concurrency_limit=8, max_size=256)

    from starlette.middleware import Middleware

    from ui.limits import StrangerLimits

    limits = Middleware(StrangerLimits, pages={STUDY_PATH: set(study_page.fns), "/": set(owner_page.fns)},
                        public=STUDY_PATH, joins=args.rater_joins)  # what strangers can make the server do is bounded (ui/limits.py)
    app = fastapi.FastAPI(middleware=host_guard_middleware(args.host) + [limits])
    common = dict(server_name=args.host, server_port=args.port, ssr_mode=False, enable_monitoring=False,
                  mcp_server=False, run_history=False, max_file_size=MAX_UPLOAD, show_error=False,
                  css_paths=[ASSETS / "style.css"],
                  blocked_paths=[str(store.path.resolve().parent), str((cache_dir() / "models").resolve())])
    gr.mount_gradio_app(app, study_page, path=STUDY_PATH.rstrip("/"), **common)  # before "/", which matches all
    gr.mount_gradio_app(app, owner_page, path="", auth=(owner, password) if args.auth else None, **common)
    print(f"app: serving http://{args.host}:{args.port}/ (owner) and {STUDY_PATH} (raters' study links)",
          file=sys.stderr)
    servers = [(uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")),
                f"{args.host}:{args.port}")]
    if args.raters_host:
        servers.append((raters_server(args, desk, common), f"{args.raters_host}:{args.raters_port}"))
        print(f"app: serving the raters' page alone on http://{args.raters_host}:{args.raters_port}{STUDY_PATH} "
              f"(links read {raters_url(args)}{STUDY_PATH})", file=sys.stderr)
    run_servers(servers)


def raters_url(args) -> str | None:
    if not args.raters_host:
        return None
    return (args.raters_url or f"http://{args.raters_host}:{args.raters_port}").rstrip("/")


def raters_server(args, desk, common):
    """The raters' page alone, for colleagues on the network (or a proxy or tunnel in front of it):
    its own server and port, with no owner page and no route to one, and the same limits for
    strangers. The owner's page stays where --host put it."""
    import fastapi
    import gradio as gr
    import uvicorn
    from starlette.middleware import Middleware

    from ui.limits import StrangerLimits
    from ui.security import host_guard_middleware
    from ui.study_page import build_study_page
    from ui.studies import STUDY_PATH

    page = build_study_page(desk)
    page.queue(default_concurrency_limit=8, max_size=256)
    limits = Middleware(StrangerLimits, pages={STUDY_PATH: set(page.fns)}, public=STUDY_PATH, joins=args.rater_joins)
    app = fastapi.FastAPI(middleware=host_guard_middleware(args.raters_host) + [limits])
    gr.mount_gradio_app(app, page, path=STUDY_PATH.rstrip("/"),
                        **{**common, "server_name": args.raters_host, "server_port": args.raters_port})
    return uvicorn.Server(uvicorn.Config(app, host=args.raters_host, port=args.raters_port, log_level="warning"))


def run_servers(servers):
    """Each server runs in a thread, as under Gradio's own launch(): SIGTERM and Ctrl-C then end the
    process at once instead of waiting for every open event stream. Nothing is lost by that: each
    write is its own committed transaction (user_store), and generation resumes at start."""
    threads = [threading.Thread(target=s.run, name=f"http {where}", daemon=True) for s, where in servers]
    for t in threads:
        t.start()
    while all(t.is_alive() for t in threads):
        threads[0].join(0.5)
    failed = [where for (server, where), t in zip(servers, threads) if not t.is_alive() and not server.started]
    for where in failed:
        print(f"app: error: could not serve on {where} (see above)", file=sys.stderr)
    if failed or len(servers) > 1:  # one server of two ended: the app is not what was asked for
        sys.exit(1)


if __name__ == "__main__":
    main()
