"""The page's header: what the app is, which models play which role, and the user picker."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..guard import for_ui
from ..handlers import DEMO_PERSONA, persona_files
from . import PRIVATE, Page


def build(page: Page) -> SimpleNamespace:
    engine = page.studio.engine
    gr.Markdown("### CoSteer Studio\n**Personalize a cloud language model without sending it your history.** "
                "A small on-device model reads your private history and steers the cloud model token by token "
                "(CoSteer, arXiv 2507.04756). The cloud receives the chosen tokens only, and those can carry what "
                "your history says: the privacy panel shows what crossed, and an entry marked sensitive has its "
                "words capped at the cloud's own probability.", elem_id="header")
    if engine.same_model:
        gr.Markdown(f"ℹ️ Demo set-up: **one model ({engine.cloud.name}, {engine.device.lm.precision} weights) plays "
                    "both roles**, cloud and device. "
                    "It shows the mechanism, not the quality of a real cloud/device pair.", elem_id="model-note")
    else:
        gr.Markdown(f"Cloud model: **{engine.cloud.name}** ({engine.cloud.where}) · device model: "
                    f"**{engine.device.name}** ({engine.device.lm.precision} weights)", elem_id="model-note")
    banner = gr.Markdown(visible=False, elem_id="banner")
    gr.Markdown("**Start here:** click an example prompt under the answers and press **Send**, or type your own. "
                "Another *User*, or an *Example persona* with **Load persona**, changes whose history steers.",
                elem_id="start-here")
    with gr.Row():
        page.user = gr.Dropdown([], label="User", value=None, elem_id="user", scale=2)
        new_name = gr.Textbox(label="New user", placeholder="name", scale=2, elem_id="new-user")
        create = gr.Button("Create user", scale=1, elem_id="create-user")
        personas = list(persona_files())
        persona = gr.Dropdown(personas, label="Example persona", scale=2, elem_id="persona",
                              value=DEMO_PERSONA if DEMO_PERSONA in personas else next(iter(personas), None))
        load = gr.Button("Load persona", scale=1, elem_id="load-persona")
    # api_name: the UI's own events must not take the names of the API's /create_user, /load_persona
    create.click(for_ui(page.studio.create_user), new_name, [page.user, new_name], api_name="ui_create_user", **PRIVATE)
    load.click(for_ui(page.studio.load_persona), persona, page.user, api_name="ui_load_persona", **PRIVATE)
    return SimpleNamespace(banner=banner)
