"""Every input the app takes, with the range it allows. The sliders are built from these specs and
every handler and named endpoint checks its arguments against them, so the API accepts exactly
what the UI offers, and a refusal names the field and the allowed range. It imports no Gradio and
nothing of ui/, so the domain layer (studies/) checks study settings against the same specs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from user_store import KINDS, VOTES
from user_store.checks import text_problem


class Refused(ValueError):
    """Input outside its field's range: shown to the user as a message, logged as one line."""


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "…"


def _shown_int(value: int) -> str:
    if abs(value) < 10**15:
        return str(value)
    return f"{'a negative' if value < 0 else 'an'} integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"


def _bound(x: float) -> str:
    """A range's end as people write it: 1 and 100, not 1.0; 0.5 stays 0.5."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Number:
    name: str
    lo: float
    hi: float
    integer: bool = False
    optional: bool = False  # blank means "not set" (None)
    off: float | None = None  # a value outside [lo, hi] that means "off" (the copy guard's 0)

    @property
    def allowed(self) -> str:
        kind = "an integer" if self.integer else "a number"
        span = f"{kind} ≥ {_bound(self.lo)}" if self.hi >= 10**15 else f"{kind} in [{_bound(self.lo)}, {_bound(self.hi)}]"
        return span if self.off is None else f"{self.off:g} (off) or {span}"

    @property
    def lowest(self) -> float:
        """The smallest value a control may offer (the off value counts)."""
        return self.lo if self.off is None else min(self.lo, self.off)

    def check(self, value):
        if value is None or (isinstance(value, str) and not value.strip()) or \
                (self.optional and isinstance(value, float) and math.isnan(value)):
            if self.optional:
                return None
            raise Refused(f"{self.name}: required; enter {self.allowed}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Refused(f"{self.name}: must be {self.allowed}, got {_shown(value)}")
        if self.off is not None and value == self.off:
            return int(value) if self.integer else float(value)
        if isinstance(value, int) and not self.lo <= value <= self.hi:  # exact for any int: 10**400 has no float
            raise Refused(f"{self.name}: must be {self.allowed}, got {_shown_int(value)}")
        if not math.isfinite(value):
            raise Refused(f"{self.name}: must be {self.allowed}, got {value}")
        if self.integer and not float(value).is_integer():
            raise Refused(f"{self.name}: must be {self.allowed}, got {value:g}")
        if not self.lo <= value <= self.hi:
            raise Refused(f"{self.name}: must be {self.allowed}, got {value:g}")
        return int(value) if self.integer else float(value)


@dataclass(frozen=True)
class Text:
    name: str
    max_chars: int
    required: bool = True
    hint: str = "type something first"
    none_is_empty: bool = True  # a blank UI box arrives as None

    def check(self, value) -> str:
        if value is None and self.none_is_empty:
            value = ""
        if not isinstance(value, str):
            raise Refused(f"{self.name}: must be text, got {type(value).__name__}")
        problem = text_problem(value)
        if problem:
            raise Refused(f"{self.name}: {problem}")
        if self.required and not value.strip():
            raise Refused(f"{self.name}: empty; {self.hint}")
        if len(value) > self.max_chars:
            raise Refused(f"{self.name}: at most {self.max_chars} characters, got {len(value)}")
        return value


@dataclass(frozen=True)
class Choice:
    name: str
    options: tuple

    def check(self, value):
        if isinstance(value, bool) or value not in self.options:
            raise Refused(f"{self.name}: must be one of {', '.join(map(str, self.options))}, got {_shown(value)}")
        return value


@dataclass(frozen=True)
class Flag:
    name: str

    def check(self, value) -> bool:
        if not isinstance(value, bool):
            raise Refused(f"{self.name}: must be true or false, got {_shown(value)}")
        return value


# -- the fields, by the names the UI and the API use ----------------------------------------
T = Number("T", 1, 100, integer=True)
ETA = Number("eta", 0.5, 20)
LAM = Number("lam", 0.1, 5)
ALPHA = Number("alpha", 0, 10)
BETA = Number("beta", 0, 10)
TEMPERATURE = Number("temperature", 0, 2)
TOP_P = Number("top_p", 0.05, 1)
SEED = Number("seed", 0, 2**31 - 1, integer=True, optional=True)
MAX_NEW_TOKENS = Number("max_new_tokens", 8, 512, integer=True)
SIGMA = Number("noise sigma", 0, 3)  # the app's range; the engine takes up to defences.SIGMA_MAX
TAU = Number("clip tau", 0, 10)  # 0 = off
SPECULATE = Number("speculate K", 1, 8, integer=True)  # 1 = off; costeer.spec.MAX_SPECULATE
COPY_GUARD = Number("copy guard", 2, 32, integer=True, off=0)  # costeer/steering/copyguard.py (MIN_RUN, MAX_RUN)
REPETITION_PENALTY = Number("repetition_penalty", 1, 2)
NO_REPEAT_NGRAM = Number("no_repeat_ngram_size", 0, 10, integer=True)
GATE_THRESHOLD = Number("gate_threshold", 0.01, 0.5)
GATE_PATIENCE = Number("gate_patience", 1, 10, integer=True)
ENTRY_ID = Number("entry id", 1, 2**63 - 1, integer=True)
VERSION = Number("entry version", 1, 2**63 - 1, integer=True, optional=True)
STUDY = Number("study", 1, 2**63 - 1, integer=True)
PAIR = Number("pair", 1, 2**63 - 1, integer=True)
RATERS = Number("raters", 0, 100, integer=True)
PAIRS_PER_RATER = Number("pairs_per_rater", 0, 10_000, integer=True)
ATTENTION_EVERY = Number("attention_every", 0, 100, integer=True)

MESSAGE = Text("message", 4000)
USER = Text("user", 200, hint="choose a user, create one, or load an example persona")
NEW_USER = Text("new user name", 200, hint="type a name")
RATER = Text("rater", 200, hint="type your name as the rater")
ENTRY_TEXT = Text("text", 100_000)
TITLE = Text("title", 200, required=False)
SWEEP_VALUES = Text("values", 200, hint="a comma-separated list of numbers")
STUDY_NAME = Text("study name", 200, hint="name the study")
INSTRUCTIONS = Text("instructions", 4000, required=False)
CARD = Text("card", 2000, required=False)
PROMPT = Text("prompt", 4000, hint="a prompt cannot be empty")
RATER_TOKEN = Text("rater", 64, hint="open the study link you were given")
OVERLAP = Number("overlap", 0, 1000, integer=True)  # raters per pair at most; 0 = no cap
CONSENT = Text("consent", 4000, required=False)  # shown before the first pair, agreed to once
COMPLETION_CODE = Text("completion_code", 64, required=False)  # shown at the end (a panel such as Prolific gives one)
COMMENT = Text("comment", 1000, required=False)
RATER_NAME = Text("rater name", 100, hint="name the rater")

SIDE_BY_SIDE = Flag("side by side")
PRIVATE = Flag("private")  # Private mode: a split transcript (costeer/steering/private.py)
ALL_PAIRS = Flag("all_pairs")
EXCLUDE_FLAGGED = Flag("exclude_flagged")
INCLUDE_FLAGGED = Flag("include_flagged")
REVEAL = Choice("reveal", ("end", "never"))  # a study's raters learn which setting was which after their last vote, or never
PINNED = Flag("pinned")
SENSITIVE = Flag("sensitive")
GATE_ON = Flag("confidence gate")
INTO_SELECTED = Flag("into the selected user")
GATE_MODE = Choice("gate mode", ("paper", "reopen"))
IMPORT_MODE = Choice("import mode", ("merge", "replace"))
SWEEP = Choice("sweep", ("T", "eta", "lam"))
VOTE = Choice("vote", tuple(VOTES))
KIND = Choice("kind", tuple(KINDS))



def text_list(name: str, spec: Text, value, most: int) -> list[str]:
    """A list of texts through the API (or one per line from a text box), each checked by `spec`."""
    if isinstance(value, str):
        value = [line for line in value.splitlines() if line.strip()]
    if not isinstance(value, (list, tuple)):
        raise Refused(f"{name}: must be a list of texts, got {type(value).__name__}")
    if not value:
        raise Refused(f"{name}: empty; {spec.hint}")
    if len(value) > most:
        raise Refused(f"{name}: at most {most}, got {len(value)}")
    out = []
    for i, v in enumerate(value):
        try:
            out.append(spec.check(v).strip())
        except Refused as exc:
            raise Refused(f"{name}[{i}]: {exc}") from None
    if len(set(out)) < len(out):
        raise Refused(f"{name}: each may appear once")
    return out


SWEEPABLE = {"T": T, "eta": ETA, "lam": LAM}
