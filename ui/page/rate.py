"""The Rate (blind A/B) tab: a quick live trial of the Chat tab's settings against the cloud
alone, the sides hidden until the vote."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

import fields as F

from ..guard import for_ui
from ..render import lock_js
from ..studies import VOTE_LABELS
from . import PRIVATE, Page


def build(page: Page, chat) -> SimpleNamespace:
    with gr.Tab("Rate (blind A/B)") as tab:
        gr.Markdown("A quick live trial: two answers to the same message, one steered and one not, in random "
                    "order. Vote, then the sides are revealed. Uses the Chat tab's parameters. For a study "
                    "with many raters and settings, use the Studies tab.")
        r = SimpleNamespace(tab=tab, trial=gr.State(None), card=gr.Markdown(elem_id="ab-card"))
        with gr.Row():
            r.rater = gr.Textbox(label="Your name (rater)", elem_id="rater", max_length=F.RATER.max_chars)
            r.message = gr.Textbox(label="Message", scale=3, elem_id="ab-message")
            r.go = gr.Button("Generate A and B", variant="primary", elem_id="ab-generate")
        with gr.Row():
            r.answer_a = gr.Textbox(label="A", lines=8, interactive=False, elem_id="answer-a")
            r.answer_b = gr.Textbox(label="B", lines=8, interactive=False, elem_id="answer-b")
        with gr.Row():
            r.vote_buttons = {v: gr.Button(label, interactive=False, elem_id=f"vote-{v}") for v, label in VOTE_LABELS}
        r.reveal = gr.Markdown(elem_id="reveal")
    _wire(r, page, chat)
    return r


def _wire(r, page: Page, chat):
    studio = page.studio
    vote_list = list(r.vote_buttons.values())
    r.go.click(lambda: [gr.update(interactive=False)] * len(vote_list), None, vote_list, queue=False, **PRIVATE).then(
        for_ui(studio.ab_generate), [page.user, r.message, *chat.sliders, *chat.decoding, chat.copy_guard],
        [r.answer_a, r.answer_b, r.trial, r.reveal, *vote_list], **PRIVATE)
    r.voted = []  # each vote's event: the page refreshes the Results tab after it
    for v, button in r.vote_buttons.items():
        r.voted.append(button.click(None, None, None, js=lock_js("[id^=vote-]", needs="#rater textarea"),
                                    **PRIVATE).then(
            for_ui(studio.cast_vote), [r.rater, r.trial, gr.State(v)],
            [r.reveal, r.trial, r.answer_a, r.answer_b, *vote_list], **PRIVATE))
