"""Private mode: a split transcript. The user reads the steered answer; in place of each token the
cloud would not have come close to choosing, the cloud receives its own best choice.

    kept back   a steered token the cloud ranked more than `margin` nats below its own top
                choice, or a deny-listed one (a word of an entry marked sensitive)
    stand-in    what the cloud receives instead: its own top choice among the tokens that are
                neither deny-listed nor an end of text (the cloud must not end a reply the user
                is still reading)

The cloud's rows continue the public text and the device's rows the private one, position for
position; later turns' prompts carry the public text. At margin 0 the cloud receives its own
greedy answer to the prompt, token for token, so what it reads carries nothing from the history;
the personalization then lives in the tokens kept on the device. The price is that b comes from
the public text, not the one the user reads: what that costs in quality and buys in privacy is
measured (`eval` methods `private` and `costeer:private=M`), not assumed.
"""
from __future__ import annotations

import math

import torch

MARGIN_MAX = 30.0  # nats: beyond this every token the cloud gives any probability is sent
# The app's Private switch and eval's `private` method. 0: the only margin measured inside the
# leakage goal (docs/privacy.md, Private mode: 0.5 and up already leak).
PRIVATE_MARGIN = 0.0


def check_margin(margin) -> float:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) \
            or not 0 <= margin <= MARGIN_MAX:
        raise ValueError(f"private margin must be a number of nats in [0, {MARGIN_MAX:g}], got {margin!r}")
    return float(margin)


class SplitTranscript:
    """Decides, per steered token, what the cloud receives. Lives on the device, with the delta."""

    def __init__(self, margin: float, deny_ids: torch.Tensor | None, eos_ids):
        self.margin = check_margin(margin)
        self.deny = deny_ids
        self.never = torch.tensor(sorted(set(eos_ids)), dtype=torch.long)  # no stand-in ends the cloud's text

    def sent(self, token: int, b: torch.Tensor) -> int:
        """The token id the cloud receives for the user's `token` (b: the cloud's log-probs)."""
        denied = self.deny is not None and bool((self.deny == token).any())
        if not denied and float(b[token]) >= float(b.max()) - self.margin:
            return token
        public = b.index_fill(0, self.never, -math.inf)
        if self.deny is not None:
            public = public.index_fill(0, self.deny, -math.inf)
        return int(torch.argmax(public))
