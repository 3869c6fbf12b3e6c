"""One fold of a reply's TokenEvents into what its readers report. The CLI, the evaluation,
the study pre-generator, the UI and `CoSteerEngine.generate` all read a reply through this, so a
count (tokens, changed, skipped, the deny-list's margin, drafts) means the same everywhere."""
from __future__ import annotations

from dataclasses import dataclass, field

from costeer.engine.latency import Latency
from costeer.engine.speculative import Speculation
from costeer.engine.text import end_on_sentence


@dataclass
class StreamSummary:
    """One stream of a reply ("steered" or "unsteered")."""

    text: str = ""
    tokens: int = 0
    changed: int = 0  # tokens whose top choice steering moved
    device_skipped: int = 0  # steps the confidence gate skipped the device
    deny_margin: float | None = None  # the largest log p − log b over deny-listed ids (<= 0: none made likelier)
    base_logprob: float = 0.0  # the sum of log b[token]: how likely the cloud alone found the tokens
    token_ids: list[int] = field(default_factory=list)
    finish: str | None = None
    speculation: Speculation = field(default_factory=Speculation)

    def add(self, ev):
        self.text += ev.text
        self.tokens += 1
        self.changed += int(ev.changed)
        self.device_skipped += int(ev.device_skipped)
        self.deny_margin = ev.deny_margin if self.deny_margin is None else max(self.deny_margin, ev.deny_margin)
        self.base_logprob += ev.base_logprob
        self.token_ids.append(ev.token_id)
        self.finish = ev.finish or self.finish
        self.speculation.add(ev)

    @property
    def shown(self) -> str:
        """The text readers see: cut by the token limit, it ends on a sentence, marked."""
        return end_on_sentence(self.text, self.finish, self.tokens)

    @property
    def fluency(self) -> float:
        """The mean log-probability the cloud alone gives the tokens (read off the decoding)."""
        return self.base_logprob / max(1, self.tokens)


class ReplySummary:
    """Every stream of one reply, and where its time went. `add` each event as it streams."""

    def __init__(self):
        self.streams: dict[str, StreamSummary] = {}
        self.latency = Latency()

    def add(self, ev):
        self.latency.add(ev)
        self.streams.setdefault(ev.stream, StreamSummary()).add(ev)

    def __getitem__(self, stream: str) -> StreamSummary:
        """A stream that sent no event reads as empty."""
        return self.streams.get(stream) or StreamSummary()

    @classmethod
    def of(cls, events) -> "ReplySummary":
        """Run an event stream to its end and fold it."""
        summary = cls()
        for ev in events:
            summary.add(ev)
        summary.latency.done()
        return summary

    def texts(self) -> dict[str, str]:
        return {s: v.text for s, v in self.streams.items()}

    def shown(self) -> dict[str, str]:
        return {s: v.shown for s, v in self.streams.items()}
