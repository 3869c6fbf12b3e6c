"""The Results tab: the live A/B votes' steered win rate with its interval, and their CSV."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..guard import for_ui
from . import PRIVATE, Page, download_js


def build(page: Page) -> SimpleNamespace:
    with gr.Tab("Results") as tab:
        table = gr.Dataframe(headers=["setting", "votes", "steered wins", "ties", "steered losses", "win rate",
                                      "95% CI"], interactive=False, elem_id="results-table")
        plot = gr.Plot()
        csv_button = gr.Button("Export all votes (CSV)", elem_id="export-votes")
        csv_file = gr.DownloadButton(visible="hidden", elem_id="votes-file")
    outputs = [table, plot]
    tab.select(for_ui(page.studio.results), None, outputs, **PRIVATE)
    csv_button.click(for_ui(page.studio.votes_csv, raises=True), None, csv_file, **PRIVATE).success(
        None, None, None, js=download_js("votes-file"))
    return SimpleNamespace(tab=tab, outputs=outputs)
