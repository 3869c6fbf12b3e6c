"""What the cloud can learn from what it receives: exposure of personal terms, and an attacker.

The cloud receives the conversation (earlier steered answers included) and one chosen token per
step. Steering makes personal terms likelier by design, so the chosen tokens can carry personal
information. Two measurements, both on the cloud-visible text only:

    distinctive_terms   the user's word 1-3-grams from their history that are rare in general
                        English (wordfreq Zipf < ZIPF_BELOW) and that the user did not type
                        themselves in this conversation
    exposure            the share of those terms that occur in the cloud-visible transcript
    PersonaAttacker     the cloud scores the reply's log-likelihood under each candidate persona's
                        profile (one forward per candidate) and guesses the best

No UI code here: the app, the eval and the tests all call these.
"""
from __future__ import annotations

import functools

import math
import re
from dataclasses import dataclass, field

import torch

ZIPF_BELOW = 3.5  # rarer than ~3 per million words of general English (wordfreq's Zipf scale)
FUNCTION_ZIPF = 6.0  # a word this frequent ("the", "in", "after") does not start or end a term
MAX_N = 3
LANGUAGE = "en"


def words(text: str) -> list[str]:
    """wordfreq's own tokenizer (lower-cased words, punctuation dropped), so terms and the
    transcript are split the same way the frequencies were counted."""
    from wordfreq import tokenize

    return tokenize(text, LANGUAGE)


_CLAUSE = re.compile(r"[\n.!?;:()]+")  # a term does not run across a line or a sentence


def _grams(ws: list[str], max_n: int = MAX_N):
    for n in range(1, max_n + 1):
        for i in range(len(ws) - n + 1):
            yield " ".join(ws[i:i + n])


@dataclass(frozen=True)
class Term:
    text: str  # lower-cased words joined by one space
    zipf: float  # wordfreq's frequency of the term in general English (0 = never seen)
    entry_id: int | None  # the first history entry it occurs in
    entry_title: str  # that entry's title (or its first words)


def distinctive_terms(entries: list[dict], user_messages: list[str] = (), zipf_below: float = ZIPF_BELOW,
                      max_n: int = MAX_N) -> dict[str, Term]:
    """The user's distinctive personal terms: rare words, and rare phrases of common words
    ("vegetarian in osaka"); a phrase holding a rare word is not counted again. `entries` are
    history rows (id, title, text); a term the user typed in `user_messages` is left out: the
    cloud saw it from the user."""
    from wordfreq import zipf_frequency

    typed = {g for m in user_messages for g in _grams(words(m), max_n)}
    terms: dict[str, Term] = {}
    for e in entries:
        title = e.get("title") or " ".join(e["text"].split()[:4])
        for clause in _CLAUSE.split(f"{e.get('title') or ''}\n{e['text']}"):
            for gram in _grams(words(clause), max_n):
                if gram in terms or gram in typed or len(gram) < 3 or any(ch.isdigit() for ch in gram):
                    continue
                parts = gram.split(" ")
                zipfs = [zipf_frequency(w, LANGUAGE) for w in parts]
                if zipfs[0] >= FUNCTION_ZIPF or zipfs[-1] >= FUNCTION_ZIPF:
                    continue
                if len(parts) > 1 and min(zipfs) < zipf_below:
                    continue  # it holds a rare word, which is a term of its own: count it once
                z = zipf_frequency(gram, LANGUAGE)
                if z < zipf_below:
                    terms[gram] = Term(gram, z, e.get("id"), title)
    return terms


@dataclass
class Exposure:
    """Which distinctive terms occur in a cloud-visible text, and their share."""

    terms: int
    exposed: list[Term] = field(default_factory=list)

    @property
    def share(self) -> float:
        return len(self.exposed) / self.terms if self.terms else 0.0


def exposure(terms: dict[str, Term], cloud_text: str) -> Exposure:
    seen = set(_grams(words(cloud_text)))
    return Exposure(len(terms), [t for g, t in terms.items() if g in seen])


def term_pattern(term: str) -> re.Pattern:
    """Finds a term in raw text: its words in order, any non-word characters between them."""
    return re.compile(r"(?<!\w)" + r"\W+".join(re.escape(w) for w in term.split(" ")) + r"(?!\w)", re.IGNORECASE)


def term_spans(text: str, terms: list[Term]) -> list[tuple[int, int, Term]]:
    """Non-overlapping (start, end, term) spans in `text`, longer terms first."""
    taken: list[tuple[int, int, Term]] = []
    for t in sorted(terms, key=lambda t: -len(t.text)):
        for m in term_pattern(t.text).finditer(text):
            if all(m.end() <= a or m.start() >= b for a, b, _ in taken):
                taken.append((m.start(), m.end(), t))
    return sorted(taken, key=lambda s: s[0])


_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_NUMBER = re.compile(r"\d+")


def deny_words(entries: list[dict]) -> list[str]:
    """Every word of the entries except function words. Frequency decides what is *distinctive*
    (for exposure), not what a user may protect: "HIV", "cancer" and "pregnant" are common words,
    and a user who marks an entry sensitive means them too. Numbers (a PIN, a code, a date) are
    listed too: the tokenizers we ship spell them digit by digit."""
    from wordfreq import zipf_frequency

    out: dict[str, None] = {}
    for e in entries:
        text = f"{e.get('title') or ''}\n{e['text']}"
        for w in _WORD.findall(text):  # as typed: "HIV" stays upper-case
            if len(w) >= 2 and zipf_frequency(w, LANGUAGE) < FUNCTION_ZIPF:
                out.setdefault(w)
        for n in _NUMBER.findall(text):
            out.setdefault(n)
    return list(out)


def deny_token_ids(tokenizer, terms) -> list[int]:
    """Every token id the words of `terms` are written with: each word as typed, lower-case and
    Capitalized, with and without a leading space (mid-sentence and at a line's
    start are two tokenizations). A word written as one token is listed whatever its length; a
    word split into pieces lists the pieces of two letters or more. Single characters (the "t"
    and "y" of " B|ik|t|arv|y") and function words are never listed: they spell every other word
    too, and the deny-list is for the personal words, not for "the". A number is the exception:
    its digits are single tokens, and a sensitive PIN can only be held back by listing them."""
    from wordfreq import zipf_frequency

    ids: set[int] = set()
    for term in terms:
        text = term.text if isinstance(term, Term) else str(term)
        for w in text.split():
            if w.isdigit():
                for variant in (w, " " + w):
                    ids.update(i for i in tokenizer(variant, add_special_tokens=False)["input_ids"]
                               if any(c.isdigit() for c in tokenizer.decode([i])))
                continue
            if zipf_frequency(w, LANGUAGE) >= FUNCTION_ZIPF:
                continue
            for form in {w, w.lower(), w.capitalize()}:
                for variant in (form, " " + form):
                    pieces = tokenizer(variant, add_special_tokens=False)["input_ids"]
                    for i in pieces:
                        piece = tokenizer.decode([i]).strip()
                        if len(pieces) == 1 and piece:
                            ids.add(i)
                        elif len(piece) >= 2 and zipf_frequency(piece, LANGUAGE) < FUNCTION_ZIPF:
                            ids.add(i)
    return sorted(ids)


# -- the cloud-side attacker --------------------------------------------------------------
class PersonaAttacker:
    """What a curious cloud can do with what it received: for each candidate persona, how much
    that persona's profile raises its own model's likelihood of the reply, and a guess.
    `lm` is the cloud model (or, with a remote cloud, the device model standing in for it).

    Calibrated against the cloud's own answer: a profile that makes *any* reply likelier (a short
    one distracts the model least) proves nothing, so each candidate's lift on the reply is
    measured against its lift on `reference`, the answer the cloud gives the same messages with
    no one's data (which the cloud can always compute). The cloud's own answer then carries no
    evidence at all, and the attacker scores chance on it exactly; without a reference the score
    is the raw log-likelihood, which favours short profiles."""

    PROFILE_TOKENS = 256  # the app's context budget

    def __init__(self, lm):
        self.lm = lm

    def profile(self, entries: list[dict]) -> str:
        """A candidate's dossier: their history entries in order, up to PROFILE_TOKENS tokens. The
        whole profile, not what retrieval would pick for one message: a persona whose retrieval
        finds nothing would otherwise look like "no profile" and explain every generic reply."""
        lines, used = [], 0
        for e in entries:
            line = f"{e['title']}: {e['text']}" if e.get("title") else e["text"]
            n = len(self.lm.tokenizer(line, add_special_tokens=False)["input_ids"])
            if used + n > self.PROFILE_TOKENS:
                break
            lines.append(line)
            used += n
        return "\n".join(lines)

    @torch.inference_mode()
    def loglik(self, messages: list[dict], reply_ids: list[int], profile: str) -> float:
        """log P(reply | messages, profile) under the cloud's model; profile "" is no one's."""
        from costeer.engine.prompts import conversation_ids, system_with_context

        if not reply_ids:
            return 0.0
        prompt = conversation_ids(self.lm.tokenizer, [{"role": "system", "content": system_with_context(profile)}]
                                  + [m for m in messages if m["role"] != "system"])
        ids = torch.tensor([prompt + list(reply_ids)], device=self.lm.device)
        logits = self.lm.model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
        return float(torch.log_softmax(logits, -1).gather(1, ids[0, len(prompt):, None]).sum())

    def lifts(self, messages: list[dict], reply_ids: list[int], profiles: dict[str, str]) -> dict[str, float]:
        """Per token, the log-likelihood each profile adds to the reply over no profile."""
        base, n = self.loglik(messages, reply_ids, ""), max(1, len(reply_ids))
        return {name: (self.loglik(messages, reply_ids, profile) - base) / n for name, profile in profiles.items()}

    @functools.lru_cache(maxsize=32)
    def _reference_lifts(self, messages: tuple, reference_ids: tuple, profiles: tuple) -> dict[str, float]:
        """The reference's lifts, once per message: every method of an eval row shares them."""
        return self.lifts([{"role": r, "content": c} for r, c in messages], list(reference_ids), dict(profiles))

    def scores(self, messages: list[dict], reply_ids: list[int], profiles: dict[str, str],
               reference_ids: list[int] | None = None) -> dict[str, float]:
        if reference_ids is None:
            return {name: self.loglik(messages, reply_ids, profile) for name, profile in profiles.items()}
        if list(reference_ids) == list(reply_ids):  # the cloud's own answer: no evidence, by construction
            return dict.fromkeys(profiles, 0.0)
        lift = self.lifts(messages, reply_ids, profiles)
        ref = self._reference_lifts(tuple((m["role"], m["content"]) for m in messages), tuple(reference_ids),
                                    tuple(profiles.items()))
        n = max(1, len(reply_ids))
        return {name: n * (lift[name] - ref[name]) for name in profiles}  # a log-likelihood ratio, in nats

    def guess(self, messages: list[dict], reply_ids: list[int], profiles: dict[str, str],
              reference_ids: list[int] | None = None) -> "Guess":
        s = self.scores(messages, reply_ids, profiles, reference_ids)
        best = max(s, key=s.get)
        top = max(s.values())
        z = sum(math.exp(v - top) for v in s.values())
        return Guess(best, {k: math.exp(v - top) / z for k, v in s.items()}, s, reference_ids is not None)


@dataclass
class Guess:
    name: str  # the persona the attacker picks (the first of equals)
    posterior: dict[str, float]  # its belief over the candidates (uniform prior)
    scores: dict[str, float]
    calibrated: bool = False  # scored against the cloud's own answer

    def credit(self, truth: str, k: int = 1) -> float:
        """P(truth among the top k) when equal scores are ordered at random: a tie of all N
        candidates earns k/N, chance, not the first name's luck."""
        s = self.scores[truth]
        above = sum(v > s for v in self.scores.values())
        level = sum(v == s for v in self.scores.values())
        return min(1.0, max(0.0, (k - above) / level))


# -- one reply, as the app's privacy panel shows it ----------------------------------------
def cloud_view(transcript, stream: str, tokenizer) -> tuple[str, str, str]:
    """(prompt, reply, rejected drafts) as text: exactly what the cloud received on `stream`. A
    speculative answer's drafts that were not kept are cloud-visible too; each round's is its own
    line, so no phrase is made up across them."""
    drafts = "\n".join(tokenizer.decode(ids, skip_special_tokens=True) for ids in transcript.drafts.get(stream, []))
    return (transcript.prompt_text[stream], tokenizer.decode(transcript.token_ids[stream], skip_special_tokens=True),
            "\n" + drafts if drafts else "")


@dataclass
class ReplyAudit:
    """Exposure of one reply's cloud-visible transcript, steered and (side by side) unsteered,
    and the attacker's guess when there are candidates to tell apart."""

    steered: Exposure
    unsteered: Exposure | None = None
    guess: Guess | None = None
    truth: str | None = None

    @property
    def attributable(self) -> float | None:
        """The exposure steering causes: steered minus unsteered on the same message."""
        return None if self.unsteered is None else self.steered.share - self.unsteered.share


def audit_reply(entries: list[dict], messages: list[dict], transcript, tokenizer) -> ReplyAudit:
    """`messages` is the conversation up to this turn (the user's own words are left out)."""
    terms = distinctive_terms(entries, [m["content"] for m in messages if m["role"] == "user"])
    found = {s: exposure(terms, "".join(cloud_view(transcript, s, tokenizer))) for s in transcript.prompt_ids}
    return ReplyAudit(found["steered"] if "steered" in found else found["unsteered"], found.get("unsteered")
                      if "steered" in found else None)


def deny_list(entries: list[dict], tokenizer) -> list[int]:
    """The deny-listed token ids of a user: every word of their entries marked sensitive but the
    function words (deny_words), typed by the user or not."""
    marked = [e for e in entries if e.get("sensitive")]
    return deny_token_ids(tokenizer, deny_words(marked)) if marked else []
