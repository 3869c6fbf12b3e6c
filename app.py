"""CoSteer Studio: the Gradio app. Layout and wiring only; handlers live in ui/handlers.py.

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

from costeer.loading import add_model_args, bounded_int
from costeer.models import cache_dir, set_offline
from costeer.policy import SteeringParams
from ui.limits import JOIN_BURST, JOIN_RATE

ASSETS = Path(__file__).resolve().parent / "assets"
MAX_UPLOAD = "5mb"  # imports larger than this are refused before they reach the handler
DEFAULTS = SteeringParams()


def slider(spec, value, step, label, elem_id=None, **kw):
    """A slider offering exactly the range its field allows (fields/__init__.py)."""
    from ui.components import FieldSlider

    return FieldSlider(spec.lo, spec.hi, value, step=step, label=label, elem_id=elem_id or spec.name, **kw)


def build_app(studio, desk):
    """The owner's page: components, then their wiring, then the named API. The rater's page is
    ui/study_page.py."""
    import gradio as gr

    import fields as F
    from ui.components import FieldNumber
    from ui.guard import check_arity, for_api, for_ui
    from ui.handlers import (DEMO_DECODING, KIND_CHOICES, MESSAGE_HINT, PAPER_DECODING, new_conversation, persona_examples,
                             persona_files)
    from ui.render import TOKENS_EMPTY, lock_js, privacy_html
    from ui.studies import LEADERBOARD_HEADERS, VOTE_LABELS, StudiesTab

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
        entry_version = gr.State(None)  # the picked entry's version: a save over a newer edit is refused
        with gr.Row():
            user = gr.Dropdown([], label="User", value=None, elem_id="user", scale=2)
            new_name = gr.Textbox(label="New user", placeholder="name", scale=2, elem_id="new-user")
            create = gr.Button("Create user", scale=1, elem_id="create-user")
            persona = gr.Dropdown(list(persona_files()), label="Example persona", scale=2, elem_id="persona")
            load = gr.Button("Load persona", scale=1, elem_id="load-persona")

        with gr.Tabs():
            with gr.Tab("Chat") as chat_tab:
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
                        tau = slider(F.TAU, 0, 0.1, "clip the delta to [−τ, τ] (0 = off)", elem_id="tau")
                        sigma = slider(F.SIGMA, 0, 0.05, "noise σ on the delta (0 = off; seeded by the seed above; "
                                       "noise, not differential privacy)", elem_id="sigma")
                        speculate = slider(F.SPECULATE, 1, 1, "speculate K: up to K tokens per cloud round trip "
                                           "(1 = off; same greedy answer; rejected drafts reach the cloud)",
                                           elem_id="speculate")
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("### Steered answer, token by token")
                        tokens = gr.HTML(TOKENS_EMPTY, elem_id="tokens")
                    with gr.Column():
                        gr.Markdown("### Privacy: what crossed to the cloud")
                        privacy = gr.HTML(privacy_html(None, "", False), elem_id="privacy")

            with gr.Tab("History") as history_tab:
                table = gr.Dataframe(headers=["id", "kind", "title", "text", "pinned", "sensitive"], interactive=False,
                                     wrap=True, elem_id="history-table")
                with gr.Row():
                    entry_id = gr.Number(None, label="entry id (click a row)", precision=0, interactive=False,
                                         elem_id="entry-id")
                    kind = gr.Dropdown(KIND_CHOICES, value="note", label="kind", elem_id="entry-kind")
                    title = gr.Textbox(label="title (optional)", elem_id="entry-title")
                    pinned = gr.Checkbox(False, label="pinned (always in the context)", elem_id="entry-pinned")
                    sensitive = gr.Checkbox(False, label="sensitive (never shown to raters; deny-list: steering never makes "
                                                         "its words likelier than the cloud alone would)", elem_id="entry-sensitive")
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

            with gr.Tab("Rate (blind A/B)") as ab_tab:
                gr.Markdown("A quick live trial: two answers to the same message, one steered and one not, in random "
                            "order. Vote, then the sides are revealed. Uses the Chat tab's parameters. For a study "
                            "with many raters and settings, use the Studies tab.")
                ab_card = gr.Markdown(elem_id="ab-card")
                with gr.Row():
                    rater = gr.Textbox(label="Your name (rater)", elem_id="rater")
                    ab_message = gr.Textbox(label="Message", scale=3, elem_id="ab-message")
                    ab_go = gr.Button("Generate A and B", variant="primary", elem_id="ab-generate")
                with gr.Row():
                    answer_a = gr.Textbox(label="A", lines=8, interactive=False, elem_id="answer-a")
                    answer_b = gr.Textbox(label="B", lines=8, interactive=False, elem_id="answer-b")
                with gr.Row():
                    vote_buttons = {v: gr.Button(label, interactive=False, elem_id=f"vote-{v}") for v, label in VOTE_LABELS}
                reveal = gr.Markdown(elem_id="reveal")

            with gr.Tab("Studies") as studies_tab:
                gr.Markdown("A **study** compares settings with many raters: personas × prompts × settings, every "
                            "answer generated ahead in the background, each rater on their own link "
                            "(`/study/?study=…&rater=…`: that page shows the study only, no chat, no history).")
                with gr.Row():
                    st_name = gr.Textbox(label="Study name", elem_id="study-name")
                    st_personas = gr.Dropdown([], multiselect=True, label="Personas (users)", elem_id="study-personas")
                st_cards = gr.Textbox(lines=4, elem_id="study-cards", max_lines=16,
                                      label="What raters see of each persona (edit before creating): a `## name` line, "
                                            "then the card. By default the profile and preference entries, never one "
                                            "marked sensitive; deleting or marking an entry sensitive later removes it "
                                            "from the cards of studies made before")
                with gr.Row():
                    st_prompts = gr.Textbox(label="Prompts, one per line", lines=4, elem_id="study-prompts")
                    st_settings = gr.Textbox("lam=0.5\nlam=2\nlam=4", lines=4, elem_id="study-settings",
                                             label="Settings, one per line (key=value: T eta lam alpha beta "
                                                   "temperature top_p seed repetition_penalty no_repeat_ngram_size "
                                                   "gate label); the unsteered baseline is added")
                with gr.Row():
                    st_all_pairs = gr.Checkbox(False, label="also compare the settings with each other", elem_id="study-all-pairs")
                    st_raters = FieldNumber(12, label="rater links", precision=0, minimum=F.RATERS.lo,
                                            maximum=F.RATERS.hi, elem_id="study-raters")
                    st_per_rater = FieldNumber(0, label="pairs per rater (0 = all)", precision=0,
                                               minimum=F.PAIRS_PER_RATER.lo, maximum=F.PAIRS_PER_RATER.hi,
                                               elem_id="study-per-rater")
                    st_attention = FieldNumber(6, label="attention check every … votes (0 = off)", precision=0,
                                               minimum=F.ATTENTION_EVERY.lo, maximum=F.ATTENTION_EVERY.hi,
                                               elem_id="study-attention")
                    st_max_new = slider(F.MAX_NEW_TOKENS, 128, 8, "max new tokens", elem_id="study-max-new")
                st_create = gr.Button("Create study and generate its answers", variant="primary", elem_id="study-create")
                st_links = gr.Markdown(elem_id="study-links")
                with gr.Row():
                    st_choice = gr.Dropdown([], label="Study", elem_id="study-choice", scale=3)
                    st_cancel = gr.Button("Cancel generation", variant="stop", scale=1, elem_id="study-cancel")
                    st_more = FieldNumber(1, label="add rater links", precision=0, minimum=1, maximum=F.RATERS.hi,
                                          scale=1, elem_id="study-more")
                    st_add = gr.Button("Add rater links", scale=1, elem_id="study-add")
                st_progress = gr.HTML(elem_id="study-progress-bar")
                st_exclude = gr.Checkbox(False, label="leave out flagged raters (failed attention checks)",
                                         elem_id="study-exclude")
                st_summary = gr.Markdown(elem_id="study-summary")
                st_board = gr.Dataframe(headers=LEADERBOARD_HEADERS, interactive=False, elem_id="study-leaderboard")
                st_plot = gr.Plot()
                gr.Markdown("**Win rate** of the row's setting against the column's (tie = ½), over the pairs between them")
                st_matrix = gr.Dataframe(interactive=False, elem_id="study-matrix")
                st_persona = gr.Dataframe(headers=["persona", "setting", "score (BT)", "95% CI", "battles"],
                                          interactive=False, elem_id="study-by-persona")
                with gr.Row():
                    st_csv = gr.Button("Export votes (CSV)", elem_id="study-export-csv")
                    st_jsonl = gr.Button("Export battles (FastChat JSONL)", elem_id="study-export-jsonl")
                    st_file = gr.DownloadButton(visible="hidden", elem_id="study-file")
                st_seen = gr.State(None)
                st_timer = gr.Timer(2.0, active=False)

            with gr.Tab("Results") as results_tab:
                results_table = gr.Dataframe(headers=["setting", "votes", "steered wins", "ties", "steered losses",
                                                      "win rate", "95% CI"], interactive=False, elem_id="results-table")
                results_plot = gr.Plot()
                csv_button = gr.Button("Export all votes (CSV)", elem_id="export-votes")
                csv_file = gr.DownloadButton(visible="hidden", elem_id="votes-file")

            with gr.Tab("Parameter explorer") as explorer_tab:
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
        chat_in = [user, message, side, *sliders, *decoding, gate_on, gate_threshold, gate_patience, gate_mode, sigma,
                   tau, speculate, conv]
        chat_out = [unsteered_chat, steered_chat, tokens, privacy, latency, status, conv, message, send, stop]
        # "always_last": a Send pressed while the last turn still runs its tail (the attacker's guess,
        # or a refusal on its way back) waits and then runs, instead of being dropped as "once" does.
        gr.on([send.click, message.submit], for_ui(studio.chat), chat_in, chat_out, show_progress="hidden",
              trigger_mode="always_last", **private)
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

        # api_name: the UI's own events must not take the names of the API's /create_user, /load_persona
        create.click(for_ui(studio.create_user), new_name, [user, new_name], api_name="ui_create_user", **private)
        load.click(for_ui(studio.load_persona), persona, user, api_name="ui_load_persona", **private)

        add.click(for_ui(studio.add_entry), [user, text, kind, title, pinned, sensitive], [table, text], **private)
        save.click(for_ui(studio.update_entry), [user, entry_id, text, kind, title, pinned, sensitive, entry_version],
                   [table, entry_version], **private)
        delete.click(for_ui(studio.ask_delete), [user, entry_id], [confirm_row, confirm_text, pending_delete], **private)
        confirm_yes.click(for_ui(studio.confirm_delete), pending_delete,
                          [table, confirm_row, pending_delete, entry_id, text], **private)
        confirm_no.click(lambda: (gr.update(visible=False), None), None, [confirm_row, pending_delete], queue=False,
                         **private)
        table.select(for_ui(studio.select_entry), user,
                     [entry_id, text, kind, title, pinned, sensitive, table, entry_version], **private)
        do_import.click(for_ui(studio.import_history), [user, upload, mode, into_selected], [user, table, upload],
                        **private)
        download = "(f) => { setTimeout(() => document.querySelector('#{id}')?.click(), 50); }"
        export.click(for_ui(studio.export_history, raises=True), user, export_file, **private).success(
            None, None, None, js=download.replace("{id}", "export-file"))
        preview.click(for_ui(studio.preview_context), [user, preview_msg], preview_out, **private)

        vote_list = list(vote_buttons.values())
        ab_go.click(lambda: [gr.update(interactive=False)] * len(vote_list), None, vote_list, queue=False,
                    **private).then(
            for_ui(studio.ab_generate), [user, ab_message, *sliders, *decoding],
            [answer_a, answer_b, trial, reveal, *vote_list], **private)
        results_out = [results_table, results_plot]
        for v, button in vote_buttons.items():
            button.click(None, None, None, js=lock_js("[id^=vote-]"), **private).then(
                for_ui(studio.cast_vote), [rater, trial, gr.State(v)], [reveal, trial, answer_a, answer_b, *vote_list],
                **private).then(for_ui(studio.results), None, results_out, **private)
        user.change(for_ui(desk.card_view), user, ab_card, queue=False, **private)

        tab = StudiesTab(desk)
        st_view = [st_progress, st_summary, st_board, st_matrix, st_persona, st_plot]
        st_create.click(for_ui(tab.create), [st_name, st_personas, st_prompts, st_settings, st_all_pairs, st_raters,
                                             st_per_rater, st_attention, st_max_new, st_cards], [st_links, st_choice],
                        **private)
        st_personas.change(for_ui(desk.cards_text), st_personas, st_cards, **private)
        st_add.click(for_ui(tab.add_links), [st_choice, st_more], st_links, **private)
        st_cancel.click(for_ui(tab.cancel), st_choice, st_progress, **private)
        for trigger in (st_choice.change, st_exclude.change):
            trigger(for_ui(tab.view), [st_choice, st_exclude], st_view, **private)
        st_timer.tick(for_ui(tab.tick), [st_choice, st_exclude, st_seen], [*st_view, st_seen], show_progress="hidden",
                      **private)
        studies_tab.select(lambda: gr.Timer(active=True), None, st_timer, queue=False, **private).then(
            for_ui(tab.choices), st_choice, st_choice, **private).then(
            for_ui(studio.persona_choices), st_personas, st_personas, **private)
        for other in (chat_tab, history_tab, ab_tab, results_tab, explorer_tab):
            other.select(lambda: gr.Timer(active=False), None, st_timer, queue=False, **private)
        for kind, button in (("csv", st_csv), ("jsonl", st_jsonl)):
            button.click(for_ui(tab.export, raises=True), [st_choice, gr.State(kind)], st_file, **private).success(
                None, None, None, js=download.replace("{id}", "study-file"))
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
            """One user's history entries (id, kind, title, text, pinned, sensitive)."""
            return studio.history(user)

        def add_history(user: str, text: str, kind: str = "note", sensitive: bool = False) -> int:
            """Add a history entry; returns its id. `sensitive` puts its words on the steering deny-list and keeps it off raters' cards."""
            return studio.add_history(user, text, kind, sensitive)

        def create_user(name: str) -> str:
            """Create a user (no history yet); returns the name."""
            return studio.add_user(name)

        def load_persona(persona: str) -> str:
            """Load an example persona (assets/personas) as a user; returns the user's name."""
            return studio.add_persona(persona)

        def create_study(name: str, personas: list[str], prompts: list[str], settings: list[dict],
                         all_pairs: bool = False, raters: int = 12, pairs_per_rater: int = 0, attention_every: int = 6,
                         max_new_tokens: int = 128, repetition_penalty: float = DEMO_DECODING["repetition_penalty"],
                         no_repeat_ngram_size: int = DEMO_DECODING["no_repeat_ngram_size"],
                         instructions: str = "", cards: dict | None = None) -> dict:
            """A study of personas x prompts x settings (+ the unsteered baseline); its answers are generated
            in the background. `cards` ({persona: text}) is what raters see of each persona (default: its
            profile and preference entries, none marked sensitive). Returns the study id and one link per
            rater (shown once)."""
            return desk.create_study(name, personas, prompts, settings, all_pairs, raters, pairs_per_rater,
                                     attention_every, max_new_tokens, repetition_penalty, no_repeat_ngram_size,
                                     instructions, cards)

        def study_status(study: int) -> dict:
            """Progress of a study: answers generated of total, pairs, raters, votes, status."""
            return desk.study_status(study)

        def cancel_study(study: int) -> dict:
            """Stop generating a study's answers (those made are kept)."""
            return desk.cancel_study(study)

        def add_raters(study: int, raters: int = 1) -> dict:
            """More rater links for a study (shown once)."""
            return desk.add_raters(study, raters)

        def leaderboard(study: int, exclude_flagged: bool = False) -> dict:
            """Bradley-Terry scores with 95% bootstrap intervals, style-controlled scores, win matrix, per
            persona, position bias, agreement and attention checks."""
            return desk.leaderboard(study, exclude_flagged)

        def ratings_summary() -> dict:
            """The live A/B tab's votes: counts and the steered win rate with a 95% interval."""
            return studio.ratings_summary()

        for fn in (generate_pair, add_history, history, ratings_summary, create_user, load_persona, create_study,
                   study_status, cancel_study, add_raters, leaderboard):
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
    add_model_args(p)  # --cloud-model, --local-model, --cloud-url, --top-k, --device, --dtype, --allow-downloads
    p.add_argument("--auth", default=None, help="USER:PASS required to open the app")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="allow a non-loopback --host without --auth (anyone on the network can read all histories)")
    p.add_argument("--rater-joins", type=join_limit, default=(JOIN_BURST, JOIN_RATE), metavar="BURST,RATE",
                   help=f"queue joins one address may make on the raters' page at once, then per second "
                        f"(default {JOIN_BURST},{JOIN_RATE:g}: a dozen scripted raters on one address fit)")
    args = p.parse_args(argv)
    if args.auth and ":" not in args.auth:
        p.error("--auth must be USER:PASS")
    if not 1 <= args.port <= 65535:
        p.error(f"--port must be in [1, 65535], got {args.port}")
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

    from costeer.loading import load_engine_or_exit
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
    pregen = Pregenerator(engine, store, studio.context_for)
    resumed = pregen.resume()
    if resumed:
        print(f"app: resuming the answers of study {', '.join(map(str, resumed))}", file=sys.stderr)
    desk = StudyDesk(store, pregen, engine.cloud.name, engine.device.name)
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
    # The server runs in a thread, as under Gradio's own launch(): SIGTERM and Ctrl-C then end the
    # process at once instead of waiting for every open event stream. Nothing is lost by that:
    # each write is its own committed transaction (user_store), and generation resumes at start.
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if not server.started:
        print(f"app: error: could not serve on {args.host}:{args.port} (see above)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
