"""HTML and text the app shows: chat bubbles, token highlights, the privacy panel, the strength
badge, the latency readout. Every user- or model-written string goes through `html.escape`."""
from __future__ import annotations

import html
import re
from dataclasses import dataclass

STRONG_C = 10.0  # above this the device's delta dominates the cloud model's distribution


def esc(text: str) -> str:
    return html.escape(text, quote=False)


def lock_js(selector: str, needs: str | None = None) -> str:
    """Browser-side: disable the buttons matching `selector` at once (a double tap sends one vote).
    With `needs` (a text box's selector), only when that box holds text: the server refuses an empty
    one in a toast, and buttons locked here would stay locked (nothing in the page's state changed)."""
    lock = f"document.querySelectorAll({selector!r}).forEach((b) => {{ b.disabled = true; }});"
    if needs:
        lock = f"const box = document.querySelector({needs!r}); if (box && box.value.trim()) {{ {lock} }}"
    return f"() => {{ {lock} }}"


def md_text(text: str) -> str:
    """Text shown inside Markdown: HTML escaped and Markdown syntax neutralised."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|>~])", r"\\\1", esc(text))


def strength_markdown(C: float | None, error: str | None = None) -> str:
    if error:
        return f"⚠️ **Invalid setting:** {esc(error)}"
    text = f"**Effective steering strength C = {C:.3f}** — the policy equals log_softmax(base + C · delta)."
    if C > STRONG_C:
        text += (f"\n\n⚠️ **Extreme steering (C > {STRONG_C:g}).** The device model's delta dominates; "
                 "expect off-topic or repetitive text. Raise λ towards α (2) to calm it.")
    elif C < 0.2:
        text += "\n\nℹ️ Very weak steering: the answer will stay close to the cloud model's own."
    return text


def bubble(text: str, settings: str = "") -> str:
    """A chat bubble's markdown: the text as text (a `<script>` shows as written), then the
    settings that produced it in small print."""
    body = esc(text) if text else "…"
    return body + (f"\n\n<sub>⚙ {esc(settings)}</sub>" if settings else "")


def shaped_by(entries: list[dict], defences) -> str:
    """What shaped a steered answer besides the sliders: the history entries its context was built
    from and the deny-list's size. Two answers to the same request differ only if one of these,
    or a setting, does."""
    names = [e["title"] or f"{e['kind']} #{e['id']}" for e in entries]
    deny = len(defences.deny_ids) if defences is not None else 0
    return (f"context: {', '.join(names)}" if names else "context: none") + f" · deny-list: {deny} token ids"


def settings_line(stream: str, params: dict | None, C: float | None, sampling: dict, shaped: str = "") -> str:
    how = "greedy" if sampling["temperature"] == 0 else \
        f"temperature {sampling['temperature']:g}, top-p {sampling['top_p']:g}, seed {sampling['seed']}"
    rep = []
    if sampling["repetition_penalty"] != 1:
        rep.append(f"repetition penalty {sampling['repetition_penalty']:g}")
    if sampling["no_repeat_ngram_size"]:
        rep.append(f"no repeated {sampling['no_repeat_ngram_size']}-grams")
    tail = " · ".join([how, *rep] if rep else [how, "no repetition control"])
    if stream == "unsteered":
        return f"cloud model alone · {tail}"
    line = f"T={params['T']} · η={params['eta']:g} · λ={params['lam']:g} · C={C:.3f} · {tail}"
    return f"{line} · {shaped}" if shaped else line


TOKENS_EMPTY = "<div class='tokens empty'>The steered answer appears here, token by token.</div>"
TOKENS_OPEN = "<div class='tokens'>"


def token_span(ev) -> str:
    """One token of the steered answer; marked when steering changed the top choice, with the top
    alternatives on hover. The token view only ever appends these (cheap to stream)."""
    base = ", ".join(f"{esc(repr(t))} {p:.2f}" for t, p in ev.top_base)
    steered = ", ".join(f"{esc(repr(t))} {p:.2f}" for t, p in ev.top_steered)
    tip = html.escape(f"base top-5: {base}\nsteered top-5: {steered}\nKL(steered‖base) = {ev.kl:.3f}")
    cls = "tok changed" if ev.changed else "tok"
    return f"<span class='{cls}' title=\"{tip}\">{esc(ev.text)}</span>"


def tokens_legend(events) -> str:
    changed = sum(ev.changed for ev in events)
    skipped = sum(ev.device_skipped for ev in events)
    gate = f" The confidence gate skipped the device for {skipped} tokens." if skipped else ""
    return (f"<div class='legend'><span class='tok changed'>highlighted</span> = steering changed the top "
            f"choice ({changed} of {len(events)} tokens). Hover a token for the top alternatives.{gate}</div>")


def tokens_html(events) -> str:
    """The finished token view: legend, then the spans."""
    if not events:
        return TOKENS_EMPTY
    return tokens_legend(events) + TOKENS_OPEN + "".join(token_span(ev) for ev in events) + "</div>"


def status_html(states: dict[str, str], note: str = "") -> str:
    """Per stream: 'generating…' or 'done · n tokens'; `note`: what the turn still does after."""
    parts = [f"<span class='state {'done' if s.startswith('done') else 'running'}' id='state-{k}'>"
             f"<b>{k}</b>: {esc(s)}</span>" for k, s in states.items()]
    if note:
        parts.append(f"<span class='state running note'>{esc(note)}</span>")
    return "<div class='status'>" + " ".join(parts) + "</div>"


PRECISION_NAMES = {"fp32": "fp32 (the exact reference)", "int8": "int8 (torch's int8 kernel)",
                   "int4": "int4, output head int8 (torch's int4 kernel)"}


def latency_html(summary: dict, remote: bool, shared: bool = False, speculation: dict | None = None,
                 projection: tuple | None = None, precision: str = "fp32") -> str:
    """The reply's timing: first token, speed, and where each step's time went. `shared`: the
    one-model demo, where the device's rows ride in the cloud's batched forward (said in the row
    itself); `speculation` (speculative.Speculation.as_dict of the steered stream): round trips and
    drafts; `projection` (bench/projection.py: what was measured, the projected pairs): "will it
    run on my PC?" for real pairs; `precision`: the device's weights (models/quantized.py)."""
    per = summary["per_step_ms"]
    cloud = "cloud (HTTP round trip)" if remote else "cloud (forward pass)"
    rows = [("device (small model, two passes)", f"{per['device']:.1f} ms"), (cloud, f"{per['cloud']:.1f} ms")]
    if shared:
        rows = [("device (small model, two passes)", "inside the forward below: one model plays both roles, its "
                 "three rows run as one batch"), ("cloud and device rows (one forward pass)", f"{per['cloud']:.1f} ms")]
    rows += [(name, f"{per[key]:.1f} ms") for name, key in (
        ("steering and choosing", "steering"), ("UI (rendering, sending)", "ui"), ("other", "other"))]
    table = "".join(f"<tr><td>{name}</td><td>{value}</td></tr>" for name, value in rows)
    return (f"<div class='latency'><b>⏱ This reply:</b> first token after {summary['time_to_first_token_ms'] / 1000:.2f} s · "
            f"{summary['tokens_per_s']:.1f} tokens/s · {summary['ms_per_step']:.0f} ms per step "
            f"({summary['steps']} steps, {summary['total_ms'] / 1000:.1f} s) · "
            f"<span class='precision'>device weights: {esc(PRECISION_NAMES.get(precision, precision))}</span>"
            f"<table><tr><th>per step</th><th></th></tr>{table}</table>"
            + _speculation_html(speculation) + _projection_html(projection)
            + "<p class='note'>T costs nothing at decode time: the closed form computes one number C from "
            "(T, η, λ, α, β), so T = 100 runs as fast as T = 1.</p></div>")


def _projection_html(projection) -> str:
    """Will it run on my PC: the projected speed of real pairs, with every input stated."""
    if not projection:
        return ""
    from costeer.bench.projection import SPECULATE_K, basis

    measured, rows = projection
    body = "".join(f"<tr><td title='{html.escape(r['inputs'])}'>{esc(r['pair'])}</td><td>{r['ms_per_token']:.0f} ms</td>"
                   f"<td>{r[f'speculate_{SPECULATE_K}_ms_per_token']:.0f} ms</td>"
                   f"<td>{r['time_to_first_token_ms'] / 1000:.2f} s</td></tr>" for r in rows)
    inputs = "".join(f"<li>{esc(r['pair'])}: {esc(r['inputs'])}</li>" for r in rows)
    return (f"<div class='projection'><b>Will it run on my PC?</b> Projected for real pairs from this reply "
            f"({esc(basis(measured))}):<table><tr><th>pair</th><th>per token</th><th>speculating K={SPECULATE_K}</th>"
            f"<th>first token</th></tr>{body}</table><ul class='note'>{inputs}</ul>"
            "<p class='note'>Assumed: the cloud's times (a 7B model on a server GPU), the round trips and 70 % of "
            "drafts kept. The device's step scales with its weights' bytes, the first token with its parameters. "
            "<code>python -m costeer bench --project</code> prints the same table.</p></div>")


def _speculation_html(spec: dict | None) -> str:
    if not spec:
        return ""
    acc = "" if spec["acceptance"] is None else f" ({100 * spec['acceptance']:.0f} %)"
    return (f"<p class='speculation'><b>Speculation:</b> {spec['round_trips']} cloud round trips for {spec['tokens']} "
            f"steered tokens · drafts kept {spec['accepted']} of {spec['drafted']}{acc} · "
            f"<b>{spec['rejected']} rejected</b> (seen by the cloud, not kept"
            + (f"; {spec['outside_top_k']} outside its top-k" if spec["outside_top_k"] else "") + ")</p>")


def _with_terms(text: str, exposed) -> str:
    """`text` escaped, with the exposed personal terms marked; hovering one names its entry."""
    from costeer.evaluation.privacy import term_spans

    out, at = [], 0
    for a, b, t in term_spans(text, list(exposed)):
        out.append(esc(text[at:a]) + f"<mark class='exposed' title='from your history: {html.escape(t.entry_title)}'>"
                   f"{esc(text[a:b])}</mark>")
        at = b
    return "".join(out) + esc(text[at:])


def _marked_prompt(prompt: str, echoes: list[str], exposed=()) -> tuple[str, int]:
    """The cloud's prompt, escaped, with earlier steered answers and exposed terms marked; how
    many earlier answers were found."""
    spans, at = [], 0
    for echo in echoes:
        echo = echo.strip()
        i = prompt.find(echo, at) if echo else -1
        if i < 0:
            continue
        spans.append(_with_terms(prompt[at:i], exposed) + f"<mark class='echo'>{_with_terms(echo, exposed)}</mark>")
        at = i + len(echo)
    return "".join(spans) + _with_terms(prompt[at:], exposed), len(spans)


def _share(e) -> str:
    return f"{len(e.exposed)} of {e.terms} ({100 * e.share:.0f}%)"


def _guess_line(guess, truth: str, label: str) -> str:
    chance = f"chance {100 / len(guess.posterior):.0f}%"
    if len(set(guess.scores.values())) == 1:
        return f"<li>{label}: no evidence, it is the cloud's own answer ({chance})</li>"
    verdict = "✅ right" if guess.name == truth else "wrong"
    return (f"<li>{label}: guesses <b>{esc(guess.name)}</b> ({verdict}; it gives {esc(truth)} "
            f"{100 * guess.posterior[truth]:.0f}%, {chance})</li>")


def deny_check_text(deny: dict) -> str:
    """The deny-list's check over everything the cloud received on the steered stream: the chosen
    tokens (each at or below the cloud's own probability) and the speculative drafts (none).
    `deny`: {"ids", "margin", "sent": defences.sent_deny_ids(...), "words": the listed words sent}."""
    sent, margin = deny["sent"], deny["margin"]
    held = margin <= 1e-6 and sent["drafts"] == 0
    words = ", ".join(f"“{esc(w)}”" for w in deny["words"][:8])
    chosen = ("none of them is among the chosen tokens the cloud received" if not sent["chosen"] else
              f"{sent['chosen']} chosen token(s) the cloud received are on it ({words}): the cloud alone made them at "
              f"least as likely, steering did not add to them" if held else
              f"{sent['chosen']} chosen token(s) the cloud received are on it ({words})")
    drafts = (f"; {sent['drafts']} of the {sent['rejected_drafts']} rejected drafts it saw are on it"
              if sent["rejected_drafts"] else "")
    verdict = ("guarantee held over everything sent" if held else
               "⚠️ the guarantee failed for what was sent, please report it")
    return (f"Deny-list: {deny['ids']} tokens from your sensitive entries; {chosen}{drafts}. {verdict} "
            f"(max log p − log b = {margin:.1e}).")


def audit_html(audit, deny: dict | None = None) -> str:
    """What the cloud could learn from this reply: the exposed terms, the share steering adds,
    the attacker's guess, and the deny-list's check."""
    if audit is None:
        return ""
    s = audit.steered
    added = (f" The unsteered answer to the same message exposes {_share(audit.unsteered)}: "
             f"<b>steering adds {100 * audit.attributable:+.0f} points</b>." if audit.unsteered is not None else
             " (Turn on side by side to see how much of it steering adds.)")
    items = "".join(f"<li><mark class='exposed'>{esc(t.text)}</mark> — from “{esc(t.entry_title)}”"
                    + (f" (#{t.entry_id})" if t.entry_id is not None else "") + "</li>" for t in s.exposed)
    guesses = ""
    if audit.guess is not None:
        how = ("how much each user's profile makes this reply likelier than its own answer to the same message"
               if audit.guess.calibrated else "this reply under each user's profile (uncalibrated: side by side "
               "compares it with the cloud's own answer)")
        guesses = (f"<p>A curious cloud scoring {how}:</p><ul>"
                   + _guess_line(audit.guess, audit.truth, "steered reply") + "</ul>")
    deny_line = ""
    if deny is not None:
        deny_line = f"<p class='note deny-check'>{deny_check_text(deny)}</p>"
    return (f"<div class='audit'><p class='warn'>⚠️ The chosen tokens can carry personal information: steering "
            f"makes your personal words likelier, and every chosen token reaches the cloud.</p>"
            f"<p><b>Your distinctive terms the cloud can read: {_share(s)}</b>.{added}</p>"
            + (f"<ul class='exposed-terms'>{items}</ul>" if items else "") + guesses + deny_line + "</div>")


def _drafts_html(transcript, stream: str, exposed, text: str) -> str:
    """Speculation's extra: drafted tokens the cloud scored and the answer did not keep. They came
    from the device's steered guess, so the personal context shaped them like the reply."""
    rounds = [r for r in transcript.drafts.get(stream, []) if r]
    if not rounds:
        return ""
    n = sum(map(len, rounds))
    return (f"<p class='warn rejected-drafts'>⚠️ Speculation: the cloud also saw <b>{n} drafted token(s)</b> "
            f"in {len(rounds)} round(s) that the answer did not keep. The device drafted them with your context's "
            f"steering, so they can carry it like the reply; plain CoSteer (speculate 1) never sends them:</p>"
            f"<pre class='reply'>{_with_terms(text.strip(), exposed)}</pre>")


@dataclass
class SplitView:
    """Private mode's two texts of one steered answer, token by token: what the user reads and
    what the cloud received, with the kept-back positions (and the ids on both sides)."""
    pieces: list[tuple[str, str, int, int]]  # (read, sent, read id, sent id) per position

    @classmethod
    def of(cls, events, tokenizer) -> "SplitView":
        piece = lambda i: tokenizer.decode([i], skip_special_tokens=True)  # noqa: E731
        return cls([(piece(ev.token_id), piece(ev.sent), ev.token_id, ev.sent) for ev in events])

    @property
    def kept(self) -> int:
        return sum(read_id != sent_id for _, _, read_id, sent_id in self.pieces)

    def html(self, side: str) -> str:
        """The text of one side ("read" or "sent"), the kept-back positions marked with their ids."""
        out = []
        for pos, (read, sent, read_id, sent_id) in enumerate(self.pieces):
            text = read if side == "read" else sent
            if read_id == sent_id:
                out.append(esc(text))
            else:
                cls, tid = ("kept", read_id) if side == "read" else ("standin", sent_id)
                out.append(f"<mark class='{cls}' data-pos='{pos}' data-id='{tid}'>{esc(text)}</mark>")
        return "".join(out)


def _split_html(split: SplitView | None, side: str) -> str:
    if split is None:
        return ""
    if side == "cloud":
        return (f"<p class='split'>🔒 <b>Private mode:</b> {split.kept} token(s) of the answer were kept on your "
                "device; in their place the cloud received its own choice (<mark class='standin'>marked</mark>). "
                "It continued from this text, not from the one you read:</p>"
                f"<pre class='reply public'>{split.html('sent')}</pre>")
    return ("<p class='split'>The answer you read (<mark class='kept'>marked</mark>: kept back, never sent):</p>"
            f"<pre class='reply private'>{split.html('read')}</pre>")


def privacy_html(transcript, context: str, same_model: bool, echoes: list[str] = (), audit=None,
                 deny: dict | None = None, reply: str = "", drafts: str = "", split: SplitView | None = None) -> str:
    """What crossed to the cloud, next to what stayed on the device, for the last reply.
    `echoes` are the earlier steered answers in this conversation: they are in the cloud's prompt,
    and they were shaped by the private context, so they are marked, not hidden. `audit`
    (costeer.evaluation.privacy.ReplyAudit) marks the exposed personal terms; `reply` is the chosen tokens
    decoded, `drafts` the rejected speculative drafts decoded (privacy.cloud_view); `split`, in
    Private mode, the two texts with the kept-back tokens marked."""
    if transcript is None or not transcript.prompt_ids:
        return ("<div class='privacy'><b>Privacy panel.</b> After a reply, this shows what the cloud "
                "received and what stayed on your device.</div>")
    stream = "steered" if "steered" in transcript.prompt_ids else "unsteered"
    exposed = audit.steered.exposed if audit is not None else ()
    prompt, marked = _marked_prompt(transcript.prompt_text[stream], list(echoes) if stream == "steered" else [], exposed)
    ids = transcript.token_ids.get(stream, [])
    shown = ", ".join(map(str, ids[:60])) + (" …" if len(ids) > 60 else "")
    ctx = esc(context) if context.strip() else "(no personal context for this user)"
    note = ("<p class='note'>Demo set-up: one model plays both roles in this process; the boundary "
            "below is the one a real cloud/device split keeps.</p>") if same_model else ""
    echo_note = (f"<p class='warn'>⚠️ It also holds <b>{marked} earlier steered answer(s)</b> (<mark class='echo'>marked</mark>). "
                 "They were shaped by your private context and can echo it: what they say reached the cloud.</p>"
                 if marked else "<p>No earlier steered answers are in it yet.</p>")
    return f"""<div class='privacy'>
<div class='side cloud'><h4>☁️ Sent to the cloud</h4>
{audit_html(audit, deny)}
<p>The conversation, <b>without your private context itself</b> ({len(transcript.prompt_ids[stream])} tokens):</p>
{echo_note}
<pre>{prompt}</pre>
<p>Then only the chosen tokens, as ids ({len(ids)}): <code>{shown}</code></p>
<p>They spell the reply (<mark class='exposed'>marked</mark>: your distinctive terms in it):</p>
<pre class='reply'>{_with_terms(reply, exposed)}</pre>
{_split_html(split, "cloud")}{_drafts_html(transcript, stream, exposed, drafts)}</div>
<div class='side device'><h4>🔒 Stayed on your device</h4>
<p>Personal context read by the on-device model, <b>never sent</b> as such:</p>
<pre>{ctx}</pre>{_split_html(split, "device")}</div>{note}</div>"""
