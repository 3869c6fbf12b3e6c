"""The Studies tab: design a rating study, watch its answers being generated, hand out rater
links, and read the leaderboard as votes arrive (refreshed by a timer while the tab is open)."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

import fields as F

from ..components import FieldNumber, slider
from ..guard import for_ui
from studies import design

from ..studies import DESK_HEADERS, INSTRUCTIONS, LEADERBOARD_HEADERS, StudiesTab
from . import PRIVATE, Page, download_js


def build(page: Page) -> SimpleNamespace:
    with gr.Tab("Studies") as tab:
        gr.Markdown("A **study** compares settings with many raters: personas × prompts × settings, every "
                    "answer generated ahead in the background, each rater on their own link "
                    "(`/study/?study=…&rater=…`: that page shows the study only, no chat, no history).")
        s = SimpleNamespace(tab=tab, handlers=StudiesTab(page.desk))
        _design(s)
        s.links = gr.Markdown(elem_id="study-links")
        with gr.Row():
            s.choice = gr.Dropdown([], label="Study", elem_id="study-choice", scale=3)
            s.cancel = gr.Button("Cancel generation", variant="stop", scale=1, elem_id="study-cancel")
            s.more = FieldNumber(1, label="add rater links", precision=0, minimum=1, maximum=F.RATERS.hi, scale=1,
                                 elem_id="study-more")
            s.add = gr.Button("Add rater links", scale=1, elem_id="study-add")
        _desk(s)
        _results(s)
        s.seen = gr.State(None)
        s.timer = gr.Timer(2.0, active=False)
    _wire(s, page)
    return s


def _design(s):
    with gr.Row():
        s.name = gr.Textbox(label="Study name", elem_id="study-name")
        s.personas = gr.Dropdown([], multiselect=True, label="Personas (users)", elem_id="study-personas")
    s.cards = gr.Textbox(lines=4, elem_id="study-cards", max_lines=16,
                         label="What raters see of each persona (edit before creating): a `## name` line, then the "
                               "card. By default the profile and preference entries, never one marked sensitive; "
                               "deleting or marking an entry sensitive later removes it from the cards of studies "
                               "made before")
    with gr.Row():
        s.prompts = gr.Textbox(label="Prompts, one per line", lines=4, elem_id="study-prompts")
        s.settings = gr.Textbox(design.DEFAULT_SETTINGS, lines=4, elem_id="study-settings",
                                label="Settings, one per line (key=value: T eta lam alpha beta temperature top_p seed "
                                      "repetition_penalty no_repeat_ngram_size gate label); the unsteered baseline "
                                      "is added")
    with gr.Accordion("What raters read: instructions, consent, completion code", open=False):
        s.instructions = gr.Textbox(INSTRUCTIONS, lines=3, max_lines=12, label="Instructions (above every pair)",
                                    elem_id="study-instructions")
        with gr.Row():
            s.consent = gr.Textbox(lines=3, label="Consent text (empty: none); raters agree to it once, before the "
                                   "first pair", elem_id="study-consent-text", scale=3)
            s.code = gr.Textbox(label="Completion code shown at the end (empty: one is made up; paste your "
                                "panel's, e.g. Prolific's)", elem_id="study-code", scale=1)
    with gr.Row():
        s.fluency = gr.Markdown(design.fluency_note(design.DEFAULT_SETTINGS), elem_id="study-fluency")
        s.include_flagged = gr.Checkbox(False, label="include settings the fluency check flags",
                                        elem_id="study-include-flagged")
        s.reveal = gr.Radio([("after their last vote", "end"), ("never", "never")], value="end",
                            label="Raters rate blind; show them which setting made which answer",
                            elem_id="study-reveal-choice")
    with gr.Row():
        s.all_pairs = gr.Checkbox(False, label="also compare the settings with each other", elem_id="study-all-pairs")
        s.raters = FieldNumber(12, label="rater links", precision=0, minimum=F.RATERS.lo, maximum=F.RATERS.hi,
                               elem_id="study-raters")
        s.per_rater = FieldNumber(0, label="pairs per rater (0 = all)", precision=0, minimum=F.PAIRS_PER_RATER.lo,
                                  maximum=F.PAIRS_PER_RATER.hi, elem_id="study-per-rater")
        s.overlap = FieldNumber(0, label="raters per pair at most (0 = no cap)", precision=0, minimum=F.OVERLAP.lo,
                                maximum=F.OVERLAP.hi, elem_id="study-overlap")
        s.attention = FieldNumber(6, label="attention check every … votes (0 = off)", precision=0,
                                  minimum=F.ATTENTION_EVERY.lo, maximum=F.ATTENTION_EVERY.hi, elem_id="study-attention")
        s.max_new = slider(F.MAX_NEW_TOKENS, 128, 8, "max new tokens", elem_id="study-max-new")
    s.create = gr.Button("Create study and generate its answers", variant="primary", elem_id="study-create")


def _desk(s):
    """The organizer's desk: every rater of the chosen study, kept across reloads."""
    s.raters_table = gr.Dataframe(headers=DESK_HEADERS, interactive=False, elem_id="study-desk",
                                  label="Raters (links can be copied again)")
    with gr.Row():
        s.revoke_name = gr.Textbox(label="rater to revoke (name as listed)", elem_id="study-revoke-name", scale=3)
        s.revoke = gr.Button("Revoke their link", variant="stop", elem_id="study-revoke", scale=1)


def _results(s):
    s.progress = gr.HTML(elem_id="study-progress-bar")
    s.exclude = gr.Checkbox(False, label="leave out flagged raters (failed attention checks)", elem_id="study-exclude")
    s.summary = gr.Markdown(elem_id="study-summary")
    s.board = gr.Dataframe(headers=LEADERBOARD_HEADERS, interactive=False, elem_id="study-leaderboard")
    s.plot = gr.Plot()
    gr.Markdown("**Win rate** of the row's setting against the column's (tie = ½), over the pairs between them")
    s.matrix = gr.Dataframe(interactive=False, elem_id="study-matrix")
    s.by_persona = gr.Dataframe(headers=["persona", "setting", "score (BT)", "95% CI", "battles"], interactive=False,
                                elem_id="study-by-persona")
    with gr.Row():
        s.csv = gr.Button("Export votes (CSV)", elem_id="study-export-csv")
        s.jsonl = gr.Button("Export battles (FastChat JSONL)", elem_id="study-export-jsonl")
        s.file = gr.DownloadButton(visible="hidden", elem_id="study-file")


def _wire(s, page: Page):
    tab, desk = s.handlers, page.desk
    view = [s.progress, s.summary, s.board, s.matrix, s.by_persona, s.plot, s.raters_table]
    s.create.click(for_ui(tab.create), [s.name, s.personas, s.prompts, s.settings, s.all_pairs, s.raters, s.per_rater,
                                        s.attention, s.max_new, s.cards, s.include_flagged, s.reveal,
                                        s.instructions, s.consent, s.code, s.overlap],
                   [s.links, s.choice],
                   **PRIVATE)
    s.settings.change(for_ui(design.fluency_note), s.settings, s.fluency, queue=False, show_progress="hidden", **PRIVATE)
    s.personas.change(for_ui(desk.cards_text), s.personas, s.cards, **PRIVATE)
    s.add.click(for_ui(tab.add_links), [s.choice, s.more], s.links, **PRIVATE).then(
        for_ui(tab.desk_rows), s.choice, s.raters_table, **PRIVATE)
    s.cancel.click(for_ui(tab.cancel), s.choice, s.progress, **PRIVATE)
    s.revoke.click(for_ui(tab.revoke), [s.choice, s.revoke_name], [s.raters_table, s.revoke_name], **PRIVATE)
    for trigger in (s.choice.change, s.exclude.change):
        trigger(for_ui(tab.view), [s.choice, s.exclude], view, **PRIVATE)
    s.timer.tick(for_ui(tab.tick), [s.choice, s.exclude, s.seen], [*view, s.seen], show_progress="hidden", **PRIVATE)
    for kind, button in (("csv", s.csv), ("jsonl", s.jsonl)):
        button.click(for_ui(tab.export, raises=True), [s.choice, gr.State(kind)], s.file, **PRIVATE).success(
            None, None, None, js=download_js("study-file"))
