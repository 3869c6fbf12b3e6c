"""The Parameter explorer: one message, a sweep of T, η or λ, each answer scored and checked."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..guard import for_ui
from . import PRIVATE, Page


def build(page: Page, chat) -> SimpleNamespace:
    with gr.Tab("Parameter explorer") as tab:
        with gr.Row():
            message = gr.Textbox(label="Message", scale=3, elem_id="ex-message")
            param = gr.Radio(["T", "eta", "lam"], value="lam", label="sweep")
            values = gr.Textbox("0.5, 1, 2, 4", label="values", elem_id="ex-values")
            go = gr.Button("Run sweep", variant="primary", elem_id="ex-go")
        gr.Markdown("Score = share of the answer's words found in the user's history. An answer is "
                    "**flagged** when the cloud model alone finds it much less likely than its own answer "
                    "(mean log-probability per token more than 5 nats lower), when it loops (over 20% "
                    "repeated token 4-grams), when it copies the history (a run of 8 or more tokens of the "
                    "context, which the cloud then receives word for word) or when it names something a "
                    "shipped persona excludes (meat for a strict vegetarian); flagged answers get no score "
                    "in the plot. Settings with the same C give the same answer, so they are run once.")
        plot = gr.Plot()
        # widths that leave every header a word per line at 1280 px, not a letter (#27)
        table = gr.Dataframe(headers=["setting", "C", "score", "fluency (mean log-prob)", "repeated token 4-grams",
                                      "copied run (tokens)", "names what the persona excludes", "check", "answer"],
                             wrap=True, interactive=False, elem_id="ex-table",
                             column_widths=["8%", "6%", "6%", "9%", "9%", "8%", "10%", "12%", "32%"])
    # "always_last": a Run pressed during a sweep runs after it, with the values then in the form
    # (Gradio's default, "once", dropped it without a word)
    go.click(for_ui(page.studio.explore), [page.user, message, param, values, *chat.sliders, chat.max_new, chat.rep,
                                           chat.ngram], [table, plot], trigger_mode="always_last", **PRIVATE)
    return SimpleNamespace(tab=tab)
