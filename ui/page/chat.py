"""The Chat tab: the two conversations side by side, the steering controls beside them, the
advanced knobs, and under them the steered answer token by token and the privacy panel."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

import fields as F
from costeer.steering.policy import SteeringParams
from costeer.steering.private import PRIVATE_MARGIN

from ..components import FieldNumber, slider
from ..guard import for_ui
from ..handlers import DEMO, MESSAGE_HINT, PAPER, new_conversation, persona_examples
from ..render import TOKENS_EMPTY, privacy_html
from . import PRIVATE, Page

DEFAULTS = SteeringParams()


def build(page: Page) -> SimpleNamespace:
    with gr.Tab("Chat") as tab:
        c = SimpleNamespace(tab=tab, conv=gr.State(new_conversation()))
        with gr.Row():
            with gr.Column(scale=3):
                _conversation(c)
            with gr.Column(scale=1, min_width=300):
                _controls(c, page.studio)
        with gr.Accordion("Advanced", open=False):
            _advanced(c)
        with gr.Row():
            with gr.Column():
                gr.Markdown("### Steered answer, token by token")
                c.tokens = gr.HTML(TOKENS_EMPTY, elem_id="tokens")
            with gr.Column():
                gr.Markdown("### Privacy: what crossed to the cloud")
                c.privacy = gr.HTML(privacy_html(None, "", False), elem_id="privacy")
    c.sliders = [c.T, c.eta, c.lam, c.alpha, c.beta]
    c.decoding = [c.temperature, c.top_p, c.seed, c.max_new, c.rep, c.ngram]
    c.reset_out = [c.conv, c.unsteered_chat, c.steered_chat, c.unsteered_chat, c.tokens, c.privacy, c.latency,
                   c.status, c.message, c.send, c.stop]
    _wire(c, page)
    return c


def _conversation(c):
    with gr.Row(equal_height=True):
        c.unsteered_chat = gr.Chatbot(label="Unsteered — cloud model alone, no personal data", elem_id="unsteered",
                                      height=290, feedback_options=None, latex_delimiters=[], autoscroll=False)
        c.steered_chat = gr.Chatbot(label="Steered — CoSteer, personalized on your device", elem_id="steered",
                                    height=290, feedback_options=None, latex_delimiters=[], autoscroll=False)
    c.status = gr.HTML(elem_id="status")
    # the example prompts sit above the message box, so a first screen at 1280x800 shows them (#27)
    c.message = gr.Textbox(label="Message", show_label=False, placeholder=MESSAGE_HINT, scale=5, elem_id="message",
                           max_length=F.MESSAGE.max_chars, render=False)  # no label line: Send stays on the first screen
    c.examples = gr.Dataset(components=[c.message], samples=[[e] for e in persona_examples(None)],
                            label="Example prompts (click one)", elem_id="examples")
    with gr.Row():
        c.message.render()
        c.send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
        c.stop = gr.Button("Stop", variant="stop", scale=1, visible=False, elem_id="stop")
        c.clear = gr.Button("New conversation", scale=1, elem_id="new-conversation")


PRIVATE_NOTE = (f"Kept back: every token more than {PRIVATE_MARGIN:g} nats below the cloud's own choice, which the "
                "cloud gets instead. **Measured** by eval (plain greedy, 64 tokens; docs/privacy.md): an attacker "
                "guessing who you are from what the cloud got gains −1.2 points over chance on the sample set, +2.3 "
                "[−1.3, 9.0] on the overlap set (CoSteer: +67.5, +66.7). Cost: ROUGE-L 0.075 on the sample set "
                "(CoSteer 0.160, the device model alone 0.086).")
PRESETS_NOTE = (f"**Demo defaults** (chosen by measurement on the bundled model, docs/evaluation.md): "
                f"T={DEMO['T']} η={DEMO['eta']:g} λ={DEMO['lam']:g}, greedy, repetition penalty "
                f"{DEMO['repetition_penalty']}, no repeated {DEMO['no_repeat_ngram_size']}-grams, copy guard "
                f"{DEMO['copy_guard']}. **Paper defaults**: T={PAPER['T']} η={PAPER['eta']:g} λ={PAPER['lam']:g}, "
                "plain greedy, no guard (tuned for 7B/1.5B pairs).")


def _controls(c, studio):
    c.side = gr.Checkbox(True, label="Side by side: show the unsteered answer too "
                                     "(changing it starts a new conversation)", elem_id="side-by-side")
    c.T = slider(F.T, DEMO["T"], 1, "T (iterations)")
    c.eta = slider(F.ETA, DEMO["eta"], 0.5, "η (learning rate)")
    c.lam = slider(F.LAM, DEMO["lam"], 0.1, "λ (regularization)")
    c.strength = gr.Markdown(studio.strength(DEMO["T"], DEMO["eta"], DEMO["lam"], DEFAULTS.alpha, DEFAULTS.beta),
                             elem_id="strength")
    c.private = gr.Checkbox(False, label="Private: keep the tokens the cloud would not have chosen on this device",
                            elem_id="private")
    gr.Markdown(PRIVATE_NOTE, elem_id="private-note")
    c.rep = slider(F.REPETITION_PENALTY, DEMO["repetition_penalty"], 0.05, "repetition penalty (1 = off)")
    c.ngram = slider(F.NO_REPEAT_NGRAM, DEMO["no_repeat_ngram_size"], 1, "no repeated n-grams of size (0 = off)")
    with gr.Row():
        c.demo_preset = gr.Button("Demo defaults", size="sm", elem_id="preset-demo")
        c.paper_preset = gr.Button("Paper defaults", size="sm", elem_id="preset-paper")
    gr.Markdown(PRESETS_NOTE, elem_id="presets-note")
    c.latency = gr.HTML(elem_id="latency")


def _advanced(c):
    with gr.Row():
        c.alpha = FieldNumber(DEFAULTS.alpha, label="α", minimum=F.ALPHA.lo, maximum=F.ALPHA.hi, elem_id="alpha")
        c.beta = FieldNumber(DEFAULTS.beta, label="β", minimum=F.BETA.lo, maximum=F.BETA.hi, elem_id="beta")
        c.temperature = slider(F.TEMPERATURE, 0, 0.05, "temperature (0 = greedy)")
        c.top_p = slider(F.TOP_P, 1, 0.05, "top-p")
        c.seed = FieldNumber(None, label="seed (blank = random)", precision=0, minimum=F.SEED.lo, maximum=F.SEED.hi,
                             elem_id="seed")
        c.max_new = slider(F.MAX_NEW_TOKENS, 128, 8, "max new tokens")
    with gr.Row():
        c.gate_on = gr.Checkbox(False, label="Confidence gate: skip the device while the cloud is sure")
        c.gate_threshold = slider(F.GATE_THRESHOLD, 0.1, 0.01, "gate threshold (skip when top p ≥ 1 − threshold)")
        c.gate_patience = slider(F.GATE_PATIENCE, 3, 1, "gate patience (confident steps first)")
        c.gate_mode = gr.Radio([("off for the rest of the answer (AdaCoSteer)", "paper"),
                                ("back on when the cloud is unsure", "reopen")], value="paper",
                               label="once the gate closes")
    with gr.Row():
        c.tau = slider(F.TAU, 0, 0.1, "clip the delta to [−τ, τ] (0 = off)", elem_id="tau")
        c.sigma = slider(F.SIGMA, 0, 0.05, "noise σ on the delta (0 = off; seeded by the seed above; "
                         "noise, not differential privacy)", elem_id="sigma")
        c.speculate = slider(F.SPECULATE, 1, 1, "speculate K: up to K tokens per cloud round trip "
                             "(1 = off; same greedy answer; rejected drafts reach the cloud)", elem_id="speculate")
        c.copy_guard = slider(F.COPY_GUARD, DEMO["copy_guard"], 1, "copy guard n: no n tokens in a row copied from "
                              "your context (0 = off)", elem_id="copy-guard")


def _wire(c, page: Page):
    studio = page.studio
    for s in c.sliders:
        s.change(studio.strength, c.sliders, c.strength, show_progress="hidden", concurrency_limit=None, **PRIVATE)
    chat_in = [page.user, c.message, c.side, *c.sliders, *c.decoding, c.gate_on, c.gate_threshold, c.gate_patience,
               c.gate_mode, c.sigma, c.tau, c.speculate, c.conv, c.copy_guard, c.private]
    chat_out = [c.unsteered_chat, c.steered_chat, c.tokens, c.privacy, c.latency, c.status, c.conv, c.message, c.send,
                c.stop]
    # "always_last": a Send pressed while the last turn still runs its tail (the attacker's guess,
    # or a refusal on its way back) waits and then runs, instead of being dropped as "once" does.
    gr.on([c.send.click, c.message.submit], for_ui(studio.chat), chat_in, chat_out, show_progress="hidden",
          trigger_mode="always_last", api_name="ui_chat", **PRIVATE)  # /chat is the named API's
    # Stop and the resets end the running reply through its session (ui/handlers.py says why
    # not `cancels=`); the reply then shows the screen they left as its own last update.
    ends = {"queue": False, "show_progress": "hidden", **PRIVATE}
    c.stop.click(for_ui(studio.stop), c.conv, [c.unsteered_chat, c.steered_chat, c.tokens, c.status, c.message, c.send,
                                               c.stop], **ends)
    c.clear.click(for_ui(studio.reset), c.side, c.reset_out, **ends)
    c.side.change(for_ui(studio.reset), c.side, c.reset_out, **ends)
    c.examples.click(lambda sample: sample[0], c.examples, c.message, queue=False, **PRIVATE)
    presets = [*c.sliders, c.temperature, c.top_p, c.seed, c.rep, c.ngram, c.copy_guard]

    def preset(p):
        return (p["T"], p["eta"], p["lam"], DEFAULTS.alpha, DEFAULTS.beta, 0, 1, None, p["repetition_penalty"],
                p["no_repeat_ngram_size"], p["copy_guard"])
    c.demo_preset.click(lambda: preset(DEMO), None, presets, queue=False, **PRIVATE)
    c.paper_preset.click(lambda: preset(PAPER), None, presets, queue=False, **PRIVATE)
