"""The owner's page, tab by tab. `build_owner_page` assembles the tabs and wires what crosses
them (the user picker, the Studies tab's timer, votes refreshing the results); each tab's module
lays out its components and wires its own events. The handlers are ui/handlers.py and
ui/studies.py; the raters' page is ui/study_page.py."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from ..guard import check_arity, for_ui

PRIVATE = {"api_visibility": "private"}  # the UI's own events: not part of the named API
HOLD_ANSWERS_JS = (Path(__file__).resolve().parents[2] / "assets" / "hold_answers.js").read_text(encoding="utf-8")
DOWNLOAD_JS = "(f) => { setTimeout(() => document.querySelector('#{id}')?.click(), 50); }"


def download_js(elem_id: str) -> str:
    """Clicks the hidden DownloadButton `elem_id` once its file is ready (one click for the user)."""
    return DOWNLOAD_JS.replace("{id}", elem_id)


@dataclass
class Page:
    """What every tab builder gets: the handlers and the header's user picker."""
    studio: object  # ui.handlers.Studio
    desk: object  # ui.studies.StudyDesk
    user: gr.Dropdown = field(default=None)


def build_owner_page(studio, desk) -> gr.Blocks:
    from . import api, chat, explorer, header, history, rate, results, studies

    with gr.Blocks(title="CoSteer Studio") as demo:
        page = Page(studio, desk)
        top = header.build(page)
        with gr.Tabs():
            c = chat.build(page)
            h = history.build(page)
            r = rate.build(page, c)
            s = studies.build(page)
            res = results.build(page)
            ex = explorer.build(page, c)
        gr.Markdown("Personal history is stored only in the local SQLite file; see README › Privacy and security.")
        wire_across_tabs(page, c, h, r, s, res, ex)
        demo.load(for_ui(studio.page_load), page.user, [page.user, top.banner], **PRIVATE)
        demo.load(None, js=HOLD_ANSWERS_JS)  # the answers' tops stay in view while they stream
        demo.unload(studio.forget)
        api.register(studio, desk)
    return check_arity(demo)


def wire_across_tabs(page: Page, chat, history, rate, studies, results, explorer):
    """Events whose trigger is in one tab and whose effect is in another."""
    studio, desk, user = page.studio, page.desk, page.user
    ends = {"queue": False, "show_progress": "hidden", **PRIVATE}
    user.change(for_ui(studio.reset), chat.side, chat.reset_out, **ends).then(
        for_ui(studio.history_rows), user, history.table, **PRIVATE).then(
        for_ui(studio.examples_for), user, chat.examples, queue=False, **PRIVATE)
    for voted in rate.voted:
        voted.then(for_ui(results.view.show), results.source, results.outputs, **PRIVATE)
    user.change(for_ui(desk.card_view), user, rate.card, queue=False, **PRIVATE)
    studies.tab.select(lambda: gr.Timer(active=True), None, studies.timer, queue=False, **PRIVATE).then(
        for_ui(studies.handlers.choices), studies.choice, studies.choice, **PRIVATE).then(
        for_ui(studio.persona_choices), studies.personas, studies.personas, **PRIVATE)
    for other in (chat.tab, history.tab, rate.tab, results.tab, explorer.tab):
        other.select(lambda: gr.Timer(active=False), None, studies.timer, queue=False, **PRIVATE)
