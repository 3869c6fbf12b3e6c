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


def build_app(studio):
    """The page: components, then their wiring, then the named API."""
    import gradio as gr

    from ui.handlers import KIND_CHOICES, Studio, new_conversation, persona_files

    engine = studio.engine
    with gr.Blocks(title="CoSteer Studio") as demo:
        gr.Markdown("# CoSteer Studio\n**Personalize a cloud language model with data that never leaves your device.** "
                    "A small on-device model reads your private history and steers the cloud model token by token "
                    "(CoSteer, arXiv 2507.04756); the cloud only ever receives the chosen tokens.")
        if engine.same_model:
            gr.Markdown(f"ℹ️ Demo set-up: **one model ({engine.cloud.name}) plays both roles**, cloud and device. "
                        "It shows the mechanism, not the quality of a real cloud/device pair.", elem_id="model-note")
        else:
            where = engine.cloud.where
            gr.Markdown(f"Cloud model: **{engine.cloud.name}** ({where}) · device model: **{engine.device.name}**",
                        elem_id="model-note")

        conv = gr.State(new_conversation())
        trial = gr.State(None)
        with gr.Row():
            user = gr.Dropdown(studio.store.users(), label="User", value=None, elem_id="user", scale=2)
            new_name = gr.Textbox(label="New user", placeholder="name", scale=2, elem_id="new-user")
            create = gr.Button("Create user", scale=1)
            persona = gr.Dropdown(list(persona_files()), label="Example persona", scale=2, elem_id="persona")
            load = gr.Button("Load persona", scale=1, elem_id="load-persona")

        with gr.Tabs():
            with gr.Tab("Chat"):
                side = gr.Checkbox(True, label="Side by side: show the unsteered answer too (changing it starts a new conversation)",
                                   elem_id="side-by-side")
                with gr.Row(equal_height=True):
                    unsteered_chat = gr.Chatbot(label="Unsteered — cloud model alone, no personal data",
                                                elem_id="unsteered", height=300)
                    steered_chat = gr.Chatbot(label="Steered — CoSteer, personalized on your device",
                                              elem_id="steered", height=300)
                with gr.Row():
                    message = gr.Textbox(label="Message", placeholder="Ask something…", scale=5, elem_id="message")
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                    clear = gr.Button("New conversation", scale=1)
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("### Steered answer, token by token")
                        tokens = gr.HTML(elem_id="tokens")
                    with gr.Column():
                        gr.Markdown("### Privacy: what crossed to the cloud")
                        privacy = gr.HTML(elem_id="privacy")

                with gr.Row():
                    T = gr.Slider(1, 100, DEFAULTS.T, step=1, label="T (iterations)", elem_id="T")
                    eta = gr.Slider(0.5, 20, DEFAULTS.eta, step=0.5, label="η (learning rate)", elem_id="eta")
                    lam = gr.Slider(0.1, 5, DEFAULTS.lam, step=0.1, label="λ (regularization)", elem_id="lam")
                strength = gr.Markdown(Studio.strength(DEFAULTS.T, DEFAULTS.eta, DEFAULTS.lam, DEFAULTS.alpha, DEFAULTS.beta),
                                       elem_id="strength")
                with gr.Accordion("Advanced", open=False):
                    with gr.Row():
                        alpha = gr.Number(DEFAULTS.alpha, label="α")
                        beta = gr.Number(DEFAULTS.beta, label="β")
                        temperature = gr.Slider(0, 2, 0, step=0.05, label="temperature (0 = greedy)")
                        top_p = gr.Slider(0.05, 1, 1, step=0.05, label="top-p")
                        seed = gr.Number(None, label="seed (blank = random)", precision=0)
                        max_new = gr.Slider(8, 512, 128, step=8, label="max new tokens")
                    with gr.Row():
                        gate_on = gr.Checkbox(False, label="Confidence gate: skip the device while the cloud is sure")
                        gate_threshold = gr.Slider(0.01, 0.5, 0.1, step=0.01, label="gate threshold (skip when top p ≥ 1 − threshold)")
                        gate_patience = gr.Slider(1, 10, 3, step=1, label="gate patience (confident steps first)")
                        gate_mode = gr.Radio([("off for the rest of the answer (AdaCoSteer)", "paper"),
                                              ("back on when the cloud is unsure", "reopen")], value="paper",
                                             label="once the gate closes")

            with gr.Tab("History"):
                table = gr.Dataframe(headers=["id", "kind", "title", "text", "pinned"], interactive=False,
                                     wrap=True, elem_id="history-table")
                with gr.Row():
                    entry_id = gr.Number(None, label="entry id (click a row)", precision=0)
                    kind = gr.Dropdown(KIND_CHOICES, value="note", label="kind")
                    title = gr.Textbox(label="title (optional)")
                    pinned = gr.Checkbox(False, label="pinned (always in the context)")
                text = gr.Textbox(label="text", lines=3, elem_id="entry-text")
                with gr.Row():
                    add = gr.Button("Add as new entry", variant="primary")
                    save = gr.Button("Save changes to entry")
                    delete = gr.Button("Delete entry", variant="stop")
                with gr.Row():
                    upload = gr.File(label="Import .json / .jsonl", file_types=[".json", ".jsonl"])
                    mode = gr.Radio(["merge", "replace"], value="merge", label="import mode")
                    do_import = gr.Button("Import")
                    export = gr.DownloadButton("Export this user (JSON)")
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

            with gr.Tab("Results"):
                refresh = gr.Button("Refresh")
                results_table = gr.Dataframe(headers=["setting", "votes", "steered wins", "ties", "steered losses",
                                                      "win rate", "95% CI"], interactive=False)
                results_plot = gr.Plot()
                csv_button = gr.DownloadButton("Export all votes (CSV)")

            with gr.Tab("Parameter explorer"):
                with gr.Row():
                    ex_message = gr.Textbox(label="Message", scale=3)
                    ex_param = gr.Radio(["T", "eta", "lam"], value="lam", label="sweep")
                    ex_values = gr.Textbox("0.5, 1, 2, 4", label="values")
                    ex_go = gr.Button("Run sweep", variant="primary")
                ex_plot = gr.Plot()
                ex_table = gr.Dataframe(headers=["setting", "C", "score", "answer"], wrap=True, interactive=False)

        gr.Markdown("Personal history is stored only in the local SQLite file; see README › Privacy and security.")

        # -- wiring -------------------------------------------------------------------
        sliders = [T, eta, lam, alpha, beta]
        for s in sliders:
            s.change(Studio.strength, sliders, strength, api_visibility="private", queue=False)
        sampling = [temperature, top_p, seed, max_new]
        chat_out = [unsteered_chat, steered_chat, tokens, privacy, conv, message]
        chat_in = [user, message, side, *sliders, *sampling, conv, gate_on, gate_threshold, gate_patience, gate_mode]
        send.click(studio.chat, chat_in, chat_out, api_visibility="private")
        message.submit(studio.chat, chat_in, chat_out, api_visibility="private")

        def reset(show_unsteered):
            return new_conversation(), [], [], gr.update(visible=show_unsteered), "", ""
        clear.click(reset, side, [conv, unsteered_chat, steered_chat, unsteered_chat, tokens, privacy], api_visibility="private")
        side.change(reset, side, [conv, unsteered_chat, steered_chat, unsteered_chat, tokens, privacy], api_visibility="private")
        user.change(reset, side, [conv, unsteered_chat, steered_chat, unsteered_chat, tokens, privacy],
                    api_visibility="private").then(studio.history_rows, user, table, api_visibility="private")

        create.click(studio.create_user, new_name, [user, new_name], api_visibility="private")
        load.click(studio.load_persona, persona, user, api_visibility="private")

        add.click(studio.add_entry, [user, text, kind, title, pinned], [table, text], api_visibility="private")
        save.click(studio.update_entry, [user, entry_id, text, kind, title, pinned], table, api_visibility="private")
        delete.click(studio.delete_entry, [user, entry_id], table, api_visibility="private")
        table.select(studio.select_entry, user, [entry_id, text, kind, title, pinned], api_visibility="private")
        do_import.click(studio.import_history, [user, upload, mode], [user, table], api_visibility="private")
        export.click(studio.export_history, user, export, api_visibility="private")
        preview.click(studio.preview_context, [user, preview_msg], preview_out, api_visibility="private")

        ab_go.click(studio.ab_generate, [user, ab_message, *sliders, *sampling], [answer_a, answer_b, trial, reveal],
                    api_visibility="private")
        for v, button in vote_buttons.items():
            button.click(studio.cast_vote, [rater, trial, gr.State(v)], [reveal, trial], api_visibility="private")

        refresh.click(studio.results, None, [results_table, results_plot], api_visibility="private")
        csv_button.click(studio.votes_csv, None, csv_button, api_visibility="private")
        ex_go.click(studio.explore, [user, ex_message, ex_param, ex_values, *sliders, max_new], [ex_table, ex_plot],
                    api_visibility="private")

        # The scriptable API (gradio_client), documented in the README.
        def generate_pair(user: str, message: str, T: float, eta: float, lam: float,
                          max_new_tokens: int = 128) -> tuple[str, str]:
            """Unsteered and steered answers to one message for one user."""
            return studio.generate_pair(user, message, T, eta, lam, max_new_tokens)

        def history(user: str) -> list:
            """One user's history entries (id, kind, title, text, pinned)."""
            return studio.history(user)

        def add_history(user: str, text: str, kind: str) -> int:
            """Add a history entry; returns its id."""
            return studio.add_history(user, text, kind)

        def rate(rater: str, user: str, message: str, answer_a: str, answer_b: str, steered_side: str, vote: str) -> int:
            """Store a blind A/B vote; returns its id."""
            return studio.rate(rater, user, message, answer_a, answer_b, steered_side, vote)

        def ratings_summary() -> dict:
            """Counts by vote and the steered win rate with a 95% interval."""
            return studio.ratings_summary()

        for fn in (generate_pair, add_history, history, rate, ratings_summary):
            gr.api(fn, api_name=fn.__name__)
    return demo


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
    demo = build_app(Studio(engine, store))
    demo.queue(default_concurrency_limit=2, max_size=64)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth,
                css_paths=[ASSETS / "style.css"], ssr_mode=False, enable_monitoring=False, mcp_server=False,
                run_history=False, strict_cors=True, max_file_size=MAX_UPLOAD,
                blocked_paths=[str(store.path.resolve().parent), str((cache_dir() / "models").resolve())],
                app_kwargs={"middleware": host_guard_middleware(args.host)}, show_error=False)


if __name__ == "__main__":
    main()
