"""The rater's page, served at /study/: one study, one pair at a time. Layout and wiring only
(handlers in ui/studies.py). It has no chat, no history, no user list and no handler that could
read them, so a rater's link cannot reach anything but its own study.
"""
from __future__ import annotations

import gradio as gr

from .guard import check_arity, for_api, for_ui
from .render import lock_js
from .studies import VOTE_LABELS, RaterPage, StudyDesk


def build_study_page(desk: StudyDesk) -> gr.Blocks:
    page = RaterPage(desk)
    with gr.Blocks(title="CoSteer Studio: rating study") as demo:
        link = gr.State(None)
        pair = gr.State(None)
        header = gr.Markdown("Opening the study…", elem_id="study-header")
        progress = gr.Markdown(elem_id="study-progress")
        with gr.Column(elem_id="study-pair") as pair_box:  # hidden when there is no pair to show
            with gr.Accordion("Who you are judging for", open=True):
                card = gr.Markdown(elem_id="persona-card")
            prompt = gr.Markdown(elem_id="study-prompt")
            with gr.Row(equal_height=True):
                with gr.Column(min_width=280, elem_classes="answer"):
                    gr.Markdown("#### A")
                    answer_a = gr.Markdown(elem_id="study-a")
                with gr.Column(min_width=280, elem_classes="answer"):
                    gr.Markdown("#### B")
                    answer_b = gr.Markdown(elem_id="study-b")
            with gr.Row(elem_id="study-votes"):
                buttons = [gr.Button(label, interactive=False, min_width=140, elem_id=f"study-vote-{v}")
                           for v, label in VOTE_LABELS]
        reveal = gr.Markdown(elem_id="study-reveal")
        next_pair = gr.Button("Next pair", variant="primary", visible=False, elem_id="study-next")

        shown = [progress, card, prompt, answer_a, answer_b, reveal, *buttons, next_pair, pair, pair_box]
        private = {"api_visibility": "private"}
        demo.load(for_ui(page.open), None, [header, link], **private).then(for_ui(page.next), link, shown, **private)
        next_pair.click(for_ui(page.next), link, shown, api_name="ui_next_pair", **private)
        for (v, _), button in zip(VOTE_LABELS, buttons):
            # locked at once in the browser, so a double tap cannot send two votes
            button.click(None, None, None, js=lock_js("#study-votes button"), **private).then(
                for_ui(page.vote), [link, pair, gr.State(v)], [reveal, *buttons, next_pair, pair],
                api_name=f"ui_vote_{v}", **private)  # not "vote": that name is the API's

        # The scriptable rater API (gradio_client on /study/): the link's study id and token each time.
        def next_pair_api(study: int, rater: str) -> dict:
            """The rater's next pair (the same one until it is voted on), or {"done": true} with, if the
            study reveals, "reveal": the settings behind each pair they rated."""
            return desk.next_pair(study, rater)

        def vote(study: int, rater: str, pair: int, vote: str) -> dict:
            """A / B / tie / both_bad for a pair issued to this link, once. Which setting made which answer
            is not said: raters stay blind until their last vote (next_pair's "reveal")."""
            return desk.vote(study, rater, pair, vote)

        gr.api(for_api(next_pair_api), api_name="next_pair", queue=False)
        gr.api(for_api(vote), api_name="vote", queue=False)
    return check_arity(demo)
