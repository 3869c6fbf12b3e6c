"""HTML and text the app shows: token highlights, the privacy panel, the strength badge."""
from __future__ import annotations

import html

STRONG_C = 10.0  # above this the device's delta dominates the cloud model's distribution


def strength_markdown(C: float | None, error: str | None = None) -> str:
    if error:
        return f"⚠️ **Invalid setting:** {error}"
    text = f"**Effective steering strength C = {C:.3f}** — the policy equals log_softmax(base + C · delta)."
    if C > STRONG_C:
        text += (f"\n\n⚠️ **Extreme steering (C > {STRONG_C:g}).** The device model's delta dominates; "
                 "expect off-topic or repetitive text. Raise λ towards α (2) to calm it.")
    elif C < 0.2:
        text += "\n\nℹ️ Very weak steering: the answer will stay close to the cloud model's own."
    return text


def tokens_html(events) -> str:
    """The steered answer token by token; tokens whose top choice steering changed are marked,
    and every token's top alternatives show on hover."""
    if not events:
        return "<div class='tokens empty'>The steered answer appears here, token by token.</div>"
    spans = []
    for ev in events:
        base = ", ".join(f"{html.escape(repr(t))} {p:.2f}" for t, p in ev.top_base)
        steered = ", ".join(f"{html.escape(repr(t))} {p:.2f}" for t, p in ev.top_steered)
        tip = f"base top-5: {base}&#10;steered top-5: {steered}&#10;KL(steered‖base) = {ev.kl:.3f}"
        cls = "tok changed" if ev.changed else "tok"
        spans.append(f"<span class='{cls}' title='{tip}'>{html.escape(ev.text)}</span>")
    changed = sum(ev.changed for ev in events)
    skipped = sum(ev.device_skipped for ev in events)
    gate = f" The confidence gate skipped the device for {skipped} tokens." if skipped else ""
    legend = (f"<div class='legend'><span class='tok changed'>highlighted</span> = steering changed the top "
              f"choice ({changed} of {len(events)} tokens). Hover a token for the top alternatives.{gate}</div>")
    return legend + "<div class='tokens'>" + "".join(spans) + "</div>"


def privacy_html(transcript, context: str, same_model: bool) -> str:
    """What crossed to the cloud, next to what stayed on the device, for the last reply."""
    if transcript is None or not transcript.prompt_ids:
        return ("<div class='privacy'><b>Privacy panel.</b> After a reply, this shows what the cloud "
                "received and what stayed on your device.</div>")
    stream = "steered" if "steered" in transcript.prompt_ids else "unsteered"
    prompt = html.escape(transcript.prompt_text[stream])
    ids = transcript.token_ids.get(stream, [])
    shown = ", ".join(map(str, ids[:60])) + (" …" if len(ids) > 60 else "")
    ctx = html.escape(context) if context.strip() else "(no personal context for this user)"
    note = ("<p class='note'>Demo set-up: one model plays both roles in this process; the boundary "
            "below is the one a real cloud/device split keeps.</p>") if same_model else ""
    return f"""<div class='privacy'>
<div class='side cloud'><h4>☁️ Sent to the cloud</h4>
<p>The conversation, <b>with no personal data</b> ({len(transcript.prompt_ids[stream])} tokens):</p>
<pre>{prompt}</pre>
<p>Then only the chosen tokens, as ids ({len(ids)}): <code>{shown}</code></p></div>
<div class='side device'><h4>🔒 Stayed on your device</h4>
<p>Personal context read by the on-device model, <b>never sent</b>:</p>
<pre>{ctx}</pre></div>{note}</div>"""
