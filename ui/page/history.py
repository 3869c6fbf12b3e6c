"""The History tab: a user's entries, editing by id (never by row position), delete with a
confirmation, import and export, and a preview of the personal context a message would get."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..guard import for_ui
from ..handlers import KIND_CHOICES
from . import PRIVATE, Page, download_js


def build(page: Page) -> SimpleNamespace:
    with gr.Tab("History") as tab:
        h = SimpleNamespace(tab=tab, pending_delete=gr.State(None),
                            entry_version=gr.State(None))  # the picked entry's version: a save over a newer edit is refused
        # widths that keep pinned and sensitive on screen at 1280 px: the text wraps instead (#27)
        h.table = gr.Dataframe(headers=["id", "kind", "title", "text", "pinned", "sensitive"], interactive=False,
                               wrap=True, elem_id="history-table",
                               column_widths=["6%", "10%", "16%", "48%", "10%", "10%"])
        _entry_form(h)
        _files(h)
        with gr.Row():
            h.preview_msg = gr.Textbox(label="Preview the personal context for a message", scale=4)
            h.preview = gr.Button("Preview", scale=1)
        h.preview_out = gr.Textbox(label="Personal context (stays on the device)", lines=6)
    _wire(h, page)
    return h


def _entry_form(h):
    with gr.Row():
        # the id the handlers read, kept hidden: Gradio shows an empty Number as "0", which reads as
        # an entry; the box beside it shows the id, or nothing until a row is picked (#27)
        h.entry_id = gr.Number(None, precision=0, visible=False, elem_id="entry-id-value")
        h.entry_shown = gr.Textbox("", label="entry id (click a row)", interactive=False, placeholder="no row picked",
                                   elem_id="entry-id")
        h.kind = gr.Dropdown(KIND_CHOICES, value="note", label="kind", elem_id="entry-kind")
        h.title = gr.Textbox(label="title (optional)", elem_id="entry-title")
        h.pinned = gr.Checkbox(False, label="pinned (always in the context)", elem_id="entry-pinned")
        h.sensitive = gr.Checkbox(False, label="sensitive (never shown to raters; deny-list: steering never makes "
                                               "its words likelier than the cloud alone would)", elem_id="entry-sensitive")
    h.text = gr.Textbox(label="text", lines=3, elem_id="entry-text")
    with gr.Row():
        h.add = gr.Button("Add as new entry", variant="primary", elem_id="add-entry")
        h.save = gr.Button("Save changes to entry", elem_id="save-entry")
        h.delete = gr.Button("Delete entry", variant="stop", elem_id="delete-entry")
    with gr.Row(visible=False, elem_id="confirm-row") as h.confirm_row:
        h.confirm_text = gr.Markdown(elem_id="confirm-text")
        h.confirm_yes = gr.Button("Yes, delete it", variant="stop", elem_id="confirm-delete")
        h.confirm_no = gr.Button("Cancel", elem_id="cancel-delete")


def _files(h):
    with gr.Row():
        h.upload = gr.File(label="Import .json / .jsonl", file_types=[".json", ".jsonl"], elem_id="upload")
        with gr.Column():
            h.mode = gr.Radio(["merge", "replace"], value="merge", label="import mode")
            h.into_selected = gr.Checkbox(False, label="into the selected user (instead of the file's own user)",
                                          elem_id="into-selected")
            h.do_import = gr.Button("Import", elem_id="import")
        with gr.Column():
            h.export = gr.Button("Export this user (JSON)", elem_id="export")
            h.export_file = gr.DownloadButton(visible="hidden", elem_id="export-file")


def _wire(h, page: Page):
    studio, user = page.studio, page.user
    form = [h.text, h.kind, h.title, h.pinned, h.sensitive]
    h.add.click(for_ui(studio.add_entry), [user, *form], [h.table, h.text], **PRIVATE)
    h.save.click(for_ui(studio.update_entry), [user, h.entry_id, *form, h.entry_version], [h.table, h.entry_version],
                 **PRIVATE)
    h.delete.click(for_ui(studio.ask_delete), [user, h.entry_id], [h.confirm_row, h.confirm_text, h.pending_delete],
                   **PRIVATE)
    h.confirm_yes.click(for_ui(studio.confirm_delete), h.pending_delete,
                        [h.table, h.confirm_row, h.pending_delete, h.entry_id, h.text], **PRIVATE)
    h.confirm_no.click(lambda: (gr.update(visible=False), None), None, [h.confirm_row, h.pending_delete], queue=False,
                       **PRIVATE)
    h.table.select(for_ui(studio.select_entry), user, [h.entry_id, *form, h.table, h.entry_version], **PRIVATE)
    h.entry_id.change(lambda v: "" if v is None else str(int(v)), h.entry_id, h.entry_shown, queue=False, **PRIVATE)
    h.do_import.click(for_ui(studio.import_from_page), [user, h.upload, h.mode, h.into_selected],
                      [user, h.table, h.upload], **PRIVATE)
    h.export.click(for_ui(studio.export_history, raises=True), user, h.export_file, **PRIVATE).success(
        None, None, None, js=download_js("export-file"))
    h.preview.click(for_ui(studio.preview_context), [user, h.preview_msg], h.preview_out, **PRIVATE)
