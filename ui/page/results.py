"""The Results tab: one view of every vote: the live A/B votes, or a study's leaderboard, picked
from one menu (ui/results.py); the live votes' CSV."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..guard import for_ui
from ..results import LIVE, LIVE_HEADERS, ResultsView
from . import PRIVATE, Page, download_js


def build(page: Page) -> SimpleNamespace:
    view = ResultsView(page.studio, page.desk)
    with gr.Tab("Results") as tab:
        source = gr.Dropdown([("Live A/B votes (Rate tab)", LIVE)], value=LIVE, label="Results of",
                             elem_id="results-source")
        summary = gr.Markdown(elem_id="results-summary")
        table = gr.Dataframe(headers=LIVE_HEADERS, interactive=False, elem_id="results-table")
        plot = gr.Plot()
        csv_button = gr.Button("Export the live A/B votes (CSV)", elem_id="export-votes")
        csv_file = gr.DownloadButton(visible="hidden", elem_id="votes-file")
    outputs = [summary, table, plot]
    tab.select(for_ui(view.choices), None, source, **PRIVATE).then(for_ui(view.show), source, outputs, **PRIVATE)
    source.input(for_ui(view.show), source, outputs, **PRIVATE)
    csv_button.click(for_ui(page.studio.votes_csv, raises=True), None, csv_file, **PRIVATE).success(
        None, None, None, js=download_js("votes-file"))
    return SimpleNamespace(tab=tab, source=source, outputs=outputs, view=view)
