"""CoSteer Studio: the Gradio app. Layout and wiring only; handlers live in ui/handlers.py.

    python app.py [--host 127.0.0.1] [--port 7860] [--db PATH] [--cloud-model ...] [--local-model ...] [--auth USER:PASS]

gradio and the handlers are imported inside functions, after `set_offline` has switched off
analytics, telemetry and the hub: those libraries read the switches at import time.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from costeer.loading import add_model_args, bounded_int
from costeer.models import cache_dir, set_offline
from costeer.policy import SteeringParams

ASSETS = Path(__file__).resolve().parent / "assets"
MAX_UPLOAD = "5mb"  # imports larger than this are refused before they reach the handler
DEFAULTS = SteeringParams()


def slider(spec, value, step, label, elem_id=None, **kw):
    """A slider offering exactly the range its field allows (ui/fields.py)."""
    from ui.components import FieldSlider

    return FieldSlider(spec.lo, spec.hi, value, step=step, label=label, elem_id=elem_id or spec.name, **kw)


def build_app(studio):
    """The page: components, then their wiring, then the named API."""
    import gradio as gr

    from ui import fields as F
    from ui.components import FieldNumber
    from ui.guard import check_arity, for_api, for_ui
    from ui.handlers import (DEMO_DECODING, KIND_CHOICES, MESSAGE_HINT, PAPER_DECODING, new_conversation, persona_examples,
                             persona_files)
    from ui.render import TOKENS_EMPTY, privacy_html

    engine = studio.engine
    with gr.Blocks(title="CoSteer Studio") as demo:
        gr.Markdown("### CoSteer Studio\n**Personalize a cloud language model with data that never leaves your device.** "
                    "A small on-device model reads your private history and steers the cloud model token by token "
                    "(CoSteer, arXiv 2507.04756); the cloud only ever receives the chosen tokens.", elem_id="header")
        if engine.same_model:
            gr.Markdown(f"ℹ️ Demo set-up: **one model ({engine.cloud.name}) plays both roles**, cloud and device. "
                        "It shows the mechanism, not the quality of a real cloud/device pair.", elem_id="model-note")
        else:
            gr.Markdown(f"Cloud model: **{engine.cloud.name}** ({engine.cloud.where}) · device model: "
                        f"**{engine.device.name}**", elem_id="model-note")
        banner = gr.Markdown(visible=False, elem_id="banner")

        conv = gr.State(new_conversation())
        trial = gr.State(None)
        pending_delete = gr.State(None)
        with gr.Row():
            user = gr.Dropdown([], label="User", value=None, elem_id="user", scale=2)
            new_name = gr.Textbox(label="New user", placeholder="name", scale=2, elem_id="new-user")
            create = gr.Button("Create user", scale=1, elem_id="create-user")
            persona = gr.Dropdown(list(persona_files()), label="Example persona", scale=2, elem_id="persona")
            load = gr.Button("Load persona", scale=1, elem_id="load-persona")

        with gr.Tabs():
            with gr.Tab("Chat"):
                with gr.Row():
                    with gr.Column(scale=3):
                        with gr.Row(equal_height=True):
                            unsteered_chat = gr.Chatbot(label="Unsteered — cloud model alone, no personal data",
                                                        elem_id="unsteered", height=370, feedback_options=None,
                                                        latex_delimiters=[])
                            steered_chat = gr.Chatbot(label="Steered — CoSteer, personalized on your device",
                                                      elem_id="steered", height=370, feedback_options=None,
                                                      latex_delimiters=[])
                        status = gr.HTML(elem_id="status")
                        with gr.Row():
                            message = gr.Textbox(label="Message", placeholder=MESSAGE_HINT, scale=5,
                                                 elem_id="message", max_length=F.MESSAGE.max_chars)
                            send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                            stop = gr.Button("Stop", variant="stop", scale=1, visible=False, elem_id="stop")
                            clear = gr.Button("New conversation", scale=1, elem_id="new-conversation")
                        examples = gr.Dataset(components=[message], samples=[[e] for e in persona_examples(None)],
                                              label="Example prompts (click one)", elem_id="examples")
                    with gr.Column(scale=1, min_width=300):
                        side = gr.Checkbox(True, label="Side by side: show the unsteered answer too "
                                                       "(changing it starts a new conversation)", elem_id="side-by-side")
                        T = slider(F.T, DEFAULTS.T, 1, "T (iterations)")
                        eta = slider(F.ETA, DEFAULTS.eta, 0.5, "η (learning rate)")
                        lam = slider(F.LAM, DEFAULTS.lam, 0.1, "λ (regularization)")
                        strength = gr.Markdown(studio.strength(DEFAULTS.T, DEFAULTS.eta, DEFAULTS.lam, DEFAULTS.alpha,
                                                               DEFAULTS.beta), elem_id="strength")
                        rep = slider(F.REPETITION_PENALTY, DEMO_DECODING["repetition_penalty"], 0.05,
                                     "repetition penalty (1 = off)")
                        ngram = slider(F.NO_REPEAT_NGRAM, DEMO_DECODING["no_repeat_ngram_size"], 1,
                                       "no repeated n-grams of size (0 = off)")
                        with gr.Row():
                            demo_preset = gr.Button("Demo default", size="sm", elem_id="preset-demo")
                            paper_preset = gr.Button("Paper: plain greedy", size="sm", elem_id="preset-paper")
                        latency = gr.HTML(elem_id="latency")
                with gr.Accordion("Advanced", open=False):
                    with gr.Row():
                        alpha = FieldNumber(DEFAULTS.alpha, label="α", minimum=F.ALPHA.lo, maximum=F.ALPHA.hi, elem_id="alpha")
                        beta = FieldNumber(DEFAULTS.beta, label="β", minimum=F.BETA.lo, maximum=F.BETA.hi, elem_id="beta")
                        temperature = slider(F.TEMPERATURE, 0, 0.05, "temperature (0 = greedy)")
                        top_p = slider(F.TOP_P, 1, 0.05, "top-p")
                        seed = FieldNumber(None, label="seed (blank = random)", precision=0, minimum=F.SEED.lo,
                                           maximum=F.SEED.hi, elem_id="seed")
                        max_new = slider(F.MAX_NEW_TOKENS, 128, 8, "max new tokens")
                    with gr.Row():
                        gate_on = gr.Checkbox(False, label="Confidence gate: skip the device while the cloud is sure")
                        gate_threshold = slider(F.GATE_THRESHOLD, 0.1, 0.01,
                                                "gate threshold (skip when top p ≥ 1 − threshold)")
                        gate_patience = slider(F.GATE_PATIENCE, 3, 1, "gate patience (confident steps first)")
                        gate_mode = gr.Radio([("off for the rest of the answer (AdaCoSteer)", "paper"),
                                              ("back on when the cloud is unsure", "reopen")], value="paper",
                                             label="once the gate closes")
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("### Steered answer, token by token")
                        tokens = gr.HTML(TOKENS_EMPTY, elem_id="tokens")
                    with gr.Column():
                        gr.Markdown("### Privacy: what crossed to the cloud")
                        privacy = gr.HTML(privacy_html(None, "", False), elem_id="privacy")

            with gr.Tab("History"):
                table = gr.Dataframe(headers=["id", "kind", "title", "text", "pinned"], interactive=False,
                                     wrap=True, elem_id="history-table")
                with gr.Row():
                    entry_id = gr.Number(None, label="entry id (click a row)", precision=0, interactive=False,
                                         elem_id="entry-id")
                    kind = gr.Dropdown(KIND_CHOICES, value="note", label="kind", elem_id="entry-kind")
                    title = gr.Textbox(label="title (optional)", elem_id="entry-title")
                    pinned = gr.Checkbox(False, label="pinned (always in the context)", elem_id="entry-pinned")
                text = gr.Textbox(label="text", lines=3, elem_id="entry-text")
                with gr.Row():
                    add = gr.Button("Add as new entry", variant="primary", elem_id="add-entry")
                    save = gr.Button("Save changes to entry", elem_id="save-entry")
                    delete = gr.Button("Delete entry", variant="stop", elem_id="delete-entry")
                with gr.Row(visible=False, elem_id="confirm-row") as confirm_row:
                    confirm_text = gr.Markdown(elem_id="confirm-text")
                    confirm_yes = gr.Button("Yes, delete it", variant="stop", elem_id="confirm-delete")
                    confirm_no = gr.Button("Cancel", elem_id="cancel-delete")
                with gr.Row():
                    upload = gr.File(label="Import .json / .jsonl", file_types=[".json", ".jsonl"], elem_id="upload")
                    with gr.Column():
                        mode = gr.Radio(["merge", "replace"], value="merge", label="import mode")
                        into_selected = gr.Checkbox(False, label="into the selected user (instead of the file's own user)",
                                                    elem_id="into-selected")
                        do_import = gr.Button("Import", elem_id="import")
                    with gr.Column():
                        export = gr.Button("Export this user (JSON)", elem_id="export")
                        export_file = gr.DownloadButton(visible="hidden", elem_id="export-file")
                with gr.Row():
                    preview_msg = gr.Textbox(label="Preview the personal context for a message", scale=4)
                    preview = gr.Button("Preview", scale=1)
                preview_out = gr.Textbox(label="Personal context (stays on the device)", lines=6)

            with gr.Tab("Rate (blind A/B)"):
                gr.Markdown("Two answers to the same message, one steered and one not, in random order. "
                            "Vote, then the sides are revealed. Uses the Chat tab's parameters.")
                with gr.Row():
                    rater = gr.Textbox(label="Your name (rater)", elem_id="rater")
                    ab_message = gr.Textbox(label="Message", scale=3, elem_id="ab-message")
                    ab_go = gr.Button("Generate A and B", variant="primary", elem_id="ab-generate")
                with gr.Row():
                    answer_a = gr.Textbox(label="A", lines=8, interactive=False, elem_id="answer-a")
                    answer_b = gr.Textbox(label="B", lines=8, interactive=False, elem_id="answer-b")
                with gr.Row():
                    vote_buttons = {v: gr.Button(label, elem_id=f"vote-{v}") for v, label in
                                    (("A", "👈 A is better"), ("B", "👉 B is better"), ("tie", "🤝 Tie"),
                                     ("both_bad", "👎 Both are bad"))}
                reveal = gr.Markdown(elem_id="reveal")

            with gr.Tab("Results") as results_tab:
                results_table = gr.Dataframe(headers=["setting", "votes", "steered wins", "ties", "steered losses",
                                                      "win rate", "95% CI"], interactive=False, elem_id="results-table")
                results_plot = gr.Plot()
                csv_button = gr.Button("Export all votes (CSV)", elem_id="export-votes")
                csv_file = gr.DownloadButton(visible="hidden", elem_id="votes-file")

            with gr.Tab("Parameter explorer"):
                with gr.Row():
                    ex_message = gr.Textbox(label="Message", scale=3, elem_id="ex-message")
                    ex_param = gr.Radio(["T", "eta", "lam"], value="lam", label="sweep")
                    ex_values = gr.Textbox("0.5, 1, 2, 4", label="values", elem_id="ex-values")
                    ex_go = gr.Button("Run sweep", variant="primary", elem_id="ex-go")
                gr.Markdown("Score = share of the answer's words found in the user's history. An answer is "
                            "**flagged** when the cloud model alone finds it much less likely than its own answer "
                            "(mean log-probability per token more than 5 nats lower) or when it loops (over 20% "
                            "repeated token 4-grams); flagged answers get no score in the plot. Settings with the "
                            "same C give the same answer, so they are run once.")
                ex_plot = gr.Plot()
                ex_table = gr.Dataframe(headers=["setting", "C", "score", "fluency (mean log-prob)", "repeated token 4-grams",
                                                 "check", "answer"], wrap=True, interactive=False, elem_id="ex-table")

        gr.Markdown("Personal history is stored only in the local SQLite file; see README › Privacy and security.")

        # -- wiring -------------------------------------------------------------------
        private = {"api_visibility": "private"}
        sliders = [T, eta, lam, alpha, beta]
        for s in sliders:
            s.change(studio.strength, sliders, strength, show_progress="hidden", concurrency_limit=None, **private)
        decoding = [temperature, top_p, seed, max_new, rep, ngram]
        chat_in = [user, message, side, *sliders, *decoding, gate_on, gate_threshold, gate_patience, gate_mode, conv]
        chat_out = [unsteered_chat, steered_chat, tokens, privacy, latency, status, conv, message, send, stop]
        gr.on([send.click, message.submit], for_ui(studio.chat), chat_in, chat_out, show_progress="hidden",
                     **private)
        # Stop and the resets end the running reply through its session (ui/handlers.py says why
        # not `cancels=`); the reply then shows the screen they left as its own last update.
        ends = {"queue": False, "show_progress": "hidden", **private}
        stop.click(for_ui(studio.stop), conv, [unsteered_chat, steered_chat, tokens, status, message, send, stop], **ends)
        reset_out = [conv, unsteered_chat, steered_chat, unsteered_chat, tokens, privacy, latency, status, message, send,
                     stop]
        clear.click(for_ui(studio.reset), side, reset_out, **ends)
        side.change(for_ui(studio.reset), side, reset_out, **ends)
        user.change(for_ui(studio.reset), side, reset_out, **ends).then(
            for_ui(studio.history_rows), user, table, **private).then(
            for_ui(studio.examples_for), user, examples, queue=False, **private)
        examples.click(lambda sample: sample[0], examples, message, queue=False, **private)
        presets = [T, eta, lam, alpha, beta, temperature, top_p, seed, rep, ngram]

        def preset(decoding):
            d = DEFAULTS
            return (d.T, d.eta, d.lam, d.alpha, d.beta, 0, 1, None, decoding["repetition_penalty"],
                    decoding["no_repeat_ngram_size"])
        demo_preset.click(lambda: preset(DEMO_DECODING), None, presets, queue=False, **private)
        paper_preset.click(lambda: preset(PAPER_DECODING), None, presets, queue=False, **private)

        create.click(for_ui(studio.create_user), new_name, [user, new_name], **private)
        load.click(for_ui(studio.load_persona), persona, user, **private)

        add.click(for_ui(studio.add_entry), [user, text, kind, title, pinned], [table, text], **private)
        save.click(for_ui(studio.update_entry), [user, entry_id, text, kind, title, pinned], table, **private)
        delete.click(for_ui(studio.ask_delete), [user, entry_id], [confirm_row, confirm_text, pending_delete], **private)
        confirm_yes.click(for_ui(studio.confirm_delete), pending_delete,
                          [table, confirm_row, pending_delete, entry_id, text], **private)
        confirm_no.click(lambda: (gr.update(visible=False), None), None, [confirm_row, pending_delete], queue=False,
                         **private)
        table.select(for_ui(studio.select_entry), user, [entry_id, text, kind, title, pinned, table], **private)
        do_import.click(for_ui(studio.import_history), [user, upload, mode, into_selected], [user, table, upload],
                        **private)
        download = "(f) => { setTimeout(() => document.querySelector('#{id}')?.click(), 50); }"
        export.click(for_ui(studio.export_history, raises=True), user, export_file, **private).success(
            None, None, None, js=download.replace("{id}", "export-file"))
        preview.click(for_ui(studio.preview_context), [user, preview_msg], preview_out, **private)

        ab_go.click(for_ui(studio.ab_generate), [user, ab_message, *sliders, *decoding], [answer_a, answer_b, trial, reveal],
                    **private)
        results_out = [results_table, results_plot]
        for v, button in vote_buttons.items():
            button.click(for_ui(studio.cast_vote), [rater, trial, gr.State(v)], [reveal, trial], **private).then(
                for_ui(studio.results), None, results_out, **private)
        results_tab.select(for_ui(studio.results), None, results_out, **private)
        csv_button.click(for_ui(studio.votes_csv, raises=True), None, csv_file, **private).success(
            None, None, None, js=download.replace("{id}", "votes-file"))
        ex_go.click(for_ui(studio.explore), [user, ex_message, ex_param, ex_values, *sliders, max_new, rep, ngram],
                    [ex_table, ex_plot], **private)
        demo.load(for_ui(studio.page_load), None, [user, banner], **private)
        demo.unload(studio.forget)

        # The scriptable API (gradio_client), documented in the README. Ranges as in the UI.
        def generate_pair(user: str, message: str, T: int = 20, eta: float = 10.0, lam: float = 2.0,
                          max_new_tokens: int = 128, repetition_penalty: float = DEMO_DECODING["repetition_penalty"],
                          no_repeat_ngram_size: int = DEMO_DECODING["no_repeat_ngram_size"]) -> tuple[str, str]:
            """Unsteered and steered answers to one message for one user."""
            return studio.generate_pair(user, message, T, eta, lam, max_new_tokens, repetition_penalty,
                                        no_repeat_ngram_size)

        def history(user: str) -> list:
            """One user's history entries (id, kind, title, text, pinned)."""
            return studio.history(user)

        def add_history(user: str, text: str, kind: str = "note") -> int:
            """Add a history entry; returns its id."""
            return studio.add_history(user, text, kind)

        def rate(rater: str, user: str, message: str, answer_a: str, answer_b: str, steered_side: str, vote: str) -> int:
            """Store a blind A/B vote; returns its id."""
            return studio.rate(rater, user, message, answer_a, answer_b, steered_side, vote)

        def ratings_summary() -> dict:
            """Counts by vote and the steered win rate with a 95% interval."""
            return studio.ratings_summary()

        for fn in (generate_pair, add_history, history, rate, ratings_summary):
            gr.api(for_api(fn), api_name=fn.__name__)
    return check_arity(demo)


def log_refusals():
    """Refusals and bugs from the handlers go to stderr as one line each (ui/guard.py)."""
    import logging

    log = logging.getLogger("costeer.app")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("app: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="CoSteer Studio")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=bounded_int("--port", 1, 65535), default=7860)
    p.add_argument("--db", default=None, help="SQLite file (env COSTEER_DB; default ./data/costeer.db)")
    add_model_args(p)  # --cloud-model, --local-model, --cloud-url, --top-k, --device, --dtype, --allow-downloads
    p.add_argument("--auth", default=None, help="USER:PASS required to open the app")
    p.add_argument("--share", action="store_true", help="ask Gradio for a public share link (off by default)")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="allow a non-loopback --host without --auth (anyone on the network can read all histories)")
    args = p.parse_args(argv)
    if args.auth and ":" not in args.auth:
        p.error("--auth must be USER:PASS")
    if not 1 <= args.port <= 65535:
        p.error(f"--port must be in [1, 65535], got {args.port}")
    return args


def main(argv=None):
    args = parse_args(argv)
    set_offline(args.allow_downloads)
    from ui.security import bind_refusal, host_guard_middleware, private_temp_dir

    refusal = bind_refusal(args.host, args.auth, args.insecure_no_auth)
    if refusal:
        print(f"app: error: {refusal}", file=sys.stderr)
        sys.exit(2)
    os.environ["GRADIO_TEMP_DIR"] = str(private_temp_dir(cache_dir()))

    from costeer.loading import load_engine_or_exit
    from ui.handlers import Studio
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
    demo = build_app(Studio(engine, store, read_only=read_only))
    demo.queue(default_concurrency_limit=2, max_size=64)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth,
                css_paths=[ASSETS / "style.css"], ssr_mode=False, enable_monitoring=False, mcp_server=False,
                run_history=False, strict_cors=True, max_file_size=MAX_UPLOAD,
                blocked_paths=[str(store.path.resolve().parent), str((cache_dir() / "models").resolve())],
                app_kwargs={"middleware": host_guard_middleware(args.host)}, show_error=False)


if __name__ == "__main__":
    main()
