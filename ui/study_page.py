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
        # open for the first pair; folded after the first vote, so on a phone the answers come first
        with gr.Accordion("How to rate", open=True, elem_id="study-how") as how:
            instructions = gr.Markdown(elem_id="study-instructions")
        with gr.Column(visible=False, elem_id="study-consent-box") as consent_box:
            consent_text = gr.Markdown(elem_id="study-consent")
            agree = gr.Button("I agree: start", variant="primary", elem_id="study-agree")
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
            comment = gr.Textbox(label="Comment (optional, sent with your vote)", max_length=1000, lines=1,
                                 elem_id="study-comment")
            with gr.Row(elem_id="study-votes"):
                buttons = [gr.Button(label, interactive=False, min_width=140, elem_id=f"study-vote-{v}")
                           for v, label in VOTE_LABELS]
        reveal = gr.Markdown(elem_id="study-reveal")
        with gr.Row():
            skip = gr.Button("Skip this pair", visible=False, elem_id="study-skip")
            next_pair = gr.Button("Next pair", variant="primary", visible=False, elem_id="study-next")

        shown = [progress, card, prompt, answer_a, answer_b, reveal, *buttons, next_pair, skip, pair, pair_box,
                 consent_box, consent_text, comment]
        private = {"api_visibility": "private"}
        demo.load(for_ui(page.open), None, [header, instructions, link], **private).then(for_ui(page.next), link, shown, **private)
        next_pair.click(for_ui(page.next), link, shown, api_name="ui_next_pair", **private)
        agree.click(for_ui(page.agree), link, shown, api_name="ui_agree", **private)
        # no browser-side lock here: the vote buttons stay as Gradio last set them, and the next pair's
        # update re-enables them (a lock set in the page would outlive an update that changes nothing)
        skip.click(for_ui(page.skip), [link, pair], shown, api_name="ui_skip", **private)
        for (v, _), button in zip(VOTE_LABELS, buttons):
            # locked at once in the browser, so a double tap cannot send two votes
            button.click(None, None, None, js=lock_js("#study-votes button"), **private).then(
                for_ui(page.vote), [link, pair, gr.State(v), comment], [reveal, *buttons, next_pair, skip, pair, how],
                api_name=f"ui_vote_{v}", **private)  # not "vote": that name is the API's

        _rater_api(desk)
    return check_arity(demo)


def _rater_api(desk: StudyDesk):
    """The scriptable rater API (gradio_client on /study/): the link's study id and token each time."""
    def next_pair_api(study: int, rater: str) -> dict:
        """The rater's next pair (the same one until it is voted on), or {"done": true} with, if the
        study reveals, "reveal": the settings behind each pair they rated."""
        return desk.next_pair(study, rater)

    def consent(study: int, rater: str, prolific_pid: str = "", study_id: str = "", session_id: str = "") -> dict:
        """Agree to the study's consent text (next_pair returns {"consent": text} until then); a
        panel's ids (Prolific's PROLIFIC_PID, STUDY_ID, SESSION_ID) are kept with the rater."""
        return desk.consent(study, rater, prolific_pid, study_id, session_id)

    def skip(study: int, rater: str, pair: int) -> dict:
        """Pass on a pair issued to this link: not a vote, not issued again; the next pair takes its place."""
        return desk.skip(study, rater, pair)

    def vote(study: int, rater: str, pair: int, vote: str, comment: str = "") -> dict:
        """A / B / tie / both_bad for a pair issued to this link, once. Which setting made which answer
        is not said: raters stay blind until their last vote (next_pair's "reveal")."""
        return desk.vote(study, rater, pair, vote, comment)

    gr.api(for_api(next_pair_api), api_name="next_pair", queue=False)
    gr.api(for_api(vote), api_name="vote", queue=False)
    gr.api(for_api(consent), api_name="consent", queue=False)
    gr.api(for_api(skip), api_name="skip", queue=False)
