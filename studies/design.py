"""What a rating study is: personas x prompts x settings, and which pairs of settings raters compare.

A setting is everything that shapes an answer: the steering parameters (T, η, λ, α, β), the
decoding and the confidence gate. The unsteered baseline (the cloud model alone, no personal
data) is always one of the settings. Every value is checked against the app's field specs
(fields/__init__.py), so a study accepts exactly the ranges the Chat tab offers, and a refusal names
the setting and the field.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, replace

from costeer.engine.decoding import ConfidenceGate, Sampling
from costeer.engine.spec import GATE_KEYS, SAMPLING_KEYS, STEERING_KEYS, DecodeSpec
from costeer.steering.defences import Defences
from costeer.steering.policy import SteeringParams, effective_strength
import fields as F
from fields import Refused

BASELINE = "unsteered"
DECODING_KEYS = tuple(k for k in SAMPLING_KEYS if k != "stop")  # stop strings are not a study setting
SPECS = {"T": F.T, "eta": F.ETA, "lam": F.LAM, "alpha": F.ALPHA, "beta": F.BETA, "temperature": F.TEMPERATURE,
         "top_p": F.TOP_P, "seed": F.SEED, "max_new_tokens": F.MAX_NEW_TOKENS,
         "repetition_penalty": F.REPETITION_PENALTY, "no_repeat_ngram_size": F.NO_REPEAT_NGRAM,
         "gate_threshold": F.GATE_THRESHOLD, "gate_patience": F.GATE_PATIENCE, "gate_mode": F.GATE_MODE}
MAX_PERSONAS, MAX_PROMPTS, MAX_SETTINGS = 10, 20, 8
LABEL = F.Text("label", 80, required=False)
# Raters' time is wasted on word salad, so a study refuses a setting stronger than this C unless
# asked to keep it. Measured with the explorer's fluency check (ui/handlers.py: 5 nats per token
# below the cloud's own answer, or looping) on the three example personas' first two prompts, 48
# tokens, demo decoding, the bundled SmolLM2-135M, 2-core AMD EPYC: flagged answers out of 6 at
# C = 19 (λ=1), 8.9, 5.1: 6; C = 3.3: 3; C = 2.4: 4; C = 1.78 (λ=2, the paper's): 0; C = 0.73: 0.
FLUENT_C_MAX = 2.0
DEFAULT_SETTINGS = "lam=2\nlam=3\nlam=4"  # C = 1.78, 0.73, 0.44: each passed the check above


def flagged(settings: list["Setting"]) -> list["Setting"]:
    """The settings the fluency check flags: stronger than FLUENT_C_MAX."""
    return [s for s in settings if s.strength is not None and s.strength > FLUENT_C_MAX]


def fluency_note(settings_text: str) -> str:
    """The study form's line under its settings: each setting's C, the flagged ones marked."""
    try:
        rows = parse_settings_text(settings_text or "")
        decoding = {"temperature": 0.0, "top_p": 1.0, "seed": None, "max_new_tokens": 128,
                    "repetition_penalty": 1.1, "no_repeat_ngram_size": 4}  # C does not depend on them
        settings = [setting_from(r, decoding, f"settings[{i}]") for i, r in enumerate(rows)]
    except Refused as exc:
        return f"⚠️ {exc}"
    marks = [f"**{_md(s.label)}**: C = {s.strength:.3g}" + (" ⚠️ *fails the fluency check*" if s in flagged(settings) else " ✓")
             for s in settings]
    return " · ".join(marks) + (f"  \nA setting with C above {FLUENT_C_MAX:g} gave word salad on the bundled model; "
                                "tick the box to include it anyway." if flagged(settings) else "")


def _md(text: str) -> str:
    """A label as literal text in Markdown (labels are typed by the organizer)."""
    return re.sub(r"([\\`*_{}\[\]<>#|~])", r"\\\1", text)


def refuse_flagged(settings: list["Setting"]):
    bad = flagged(settings)
    if bad:
        named = "; ".join(f"{s.label} (C = {s.strength:.3g})" for s in bad)
        raise Refused(f"settings: {named} fails the fluency check (C above {FLUENT_C_MAX:g} gave word salad on the "
                      "bundled model, a waste of raters' time); tick 'include settings the fluency check flags' "
                      "(API: include_flagged = true) to keep it")


@dataclass(frozen=True)
class Setting:
    """One way of answering. `config` holds every value (the stored, shown form)."""

    label: str
    config: dict
    baseline: bool = False

    @classmethod
    def from_row(cls, row: dict) -> "Setting":
        """From a study_settings row (user_store/studies.py)."""
        return cls(row["label"], row["config"], bool(row["baseline"]))

    def spec(self, mode: str | None = None, defences: Defences | None = None) -> DecodeSpec:
        """How this setting decodes: `config` is DecodeSpec's flat form (engine/spec.py). `mode`
        defaults to the setting's own; the defences are the persona's, added by the caller."""
        values = {k: v for k, v in self.config.items() if not self.baseline or k in DECODING_KEYS}
        spec = DecodeSpec.from_dict({**values, "mode": mode or self.mode})
        return spec if defences is None else replace(spec, defences=defences)

    @property
    def params(self) -> SteeringParams:
        return self.spec().params  # the paper's defaults for the baseline, whose stream is not steered

    @property
    def sampling(self) -> Sampling:
        return self.spec().sampling

    @property
    def gate(self) -> ConfidenceGate | None:
        return self.spec().gate

    @property
    def strength(self) -> float | None:
        return None if self.baseline else effective_strength(self.params)

    @property
    def mode(self) -> str:
        return "unsteered" if self.baseline else "steered"


def setting_from(raw, decoding: dict, where: str) -> Setting:
    """A steered setting from {"T": 20, "eta": 10, ...}: missing steering values take the paper's
    defaults, missing decoding values the study's. Unknown keys are refused, not ignored."""
    if not isinstance(raw, dict):
        raise Refused(f"{where}: must be an object such as {{\"T\": 20, \"eta\": 10, \"lam\": 2}}, got {type(raw).__name__}")
    unknown = set(raw) - set(SPECS) - {"label", "gate"}
    if unknown:
        raise Refused(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                      f"allowed: label, {', '.join(SPECS)}")
    defaults = SteeringParams().as_dict()
    config = {k: _checked(k, raw.get(k, defaults[k]), where) for k in STEERING_KEYS}
    config.update({k: _checked(k, raw.get(k, decoding[k]), where) for k in DECODING_KEYS})
    gate = _checked("gate", raw.get("gate", any(k in raw for k in GATE_KEYS)), where, F.GATE_ON)
    if gate:  # the Chat tab's gate defaults
        gate_defaults = {"gate_threshold": 0.1, "gate_patience": 3, "gate_mode": "paper"}
        config.update({k: _checked(k, raw.get(k, gate_defaults[k]), where) for k in GATE_KEYS})
    label = _checked("label", raw.get("label"), where, LABEL).strip() or default_label(config)
    if label == BASELINE:
        raise Refused(f"{where}: label {BASELINE!r} is the baseline's; choose another")
    return Setting(label, config)


def baseline(decoding: dict) -> Setting:
    return Setting(BASELINE, {k: decoding[k] for k in DECODING_KEYS}, baseline=True)


def check_decoding(raw: dict) -> dict:
    return {k: _checked(k, raw[k], "decoding") for k in DECODING_KEYS}


def default_label(config: dict) -> str:
    label = f"T={config['T']} η={config['eta']:g} λ={config['lam']:g}"
    if (config["alpha"], config["beta"]) != (2.0, 1.0):
        label += f" α={config['alpha']:g} β={config['beta']:g}"
    return label + (" gated" if config.get("gate_mode") else "")


def parse_settings_text(text: str) -> list[dict]:
    """The Studies tab's settings box: one setting per line, `key=value` pairs
    (`T=20 eta=10 lam=2`, `lam=0.5 label=gentle`). Numbers become numbers."""
    settings = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        raw = {}
        for part in line.replace(",", " ").split():
            key, sep, value = part.partition("=")
            if not sep:
                raise Refused(f"settings line {n}: {part!r} is not key=value (e.g. T=20 eta=10 lam=2)")
            raw[key.strip()] = _number_or_text(value.strip())
        settings.append(raw)
    return settings


def pairs_of(settings: list[Setting], all_pairs: bool) -> list[tuple[int, int]]:
    """Indices of the settings compared: each steered one against the baseline (index 0), and with
    `all_pairs` each against each other too."""
    steered = range(1, len(settings))
    pairs = [(0, i) for i in steered]
    if all_pairs:
        pairs += list(itertools.combinations(steered, 2))
    return pairs


def _checked(key: str, value, where: str, spec=None):
    """A setting's value checked by its field; a refusal names the setting and the key
    (`settings[2].lam: must be a number in [0.1, 5], got 9`)."""
    try:
        return (spec or SPECS[key]).check(value)
    except Refused as exc:
        raise Refused(f"{where}.{key}: {str(exc).split(': ', 1)[-1]}") from None


def _number_or_text(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)
