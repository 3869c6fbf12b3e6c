"""A corpus of bad input for the named API (raw HTTP, so no client-side check gets in the way)
and for the UI handlers (in process). Every refusal names its field; nothing is written; the
server log has one line per refusal and no traceback."""
import json
import math
import urllib.request
from types import SimpleNamespace

import pytest

from apprunner import running_app
from fields import Refused
from ui.handlers import Studio, new_conversation
from user_store import StoreError, UserStore

KENJI = "Kenji (Osaka, vegetarian, jazz)"
MB = "x" * 1_000_000
NUMBERS = [None, "", "x", "20", True, [], {}, math.nan, math.inf, -math.inf, -1, 1e308, -1e308, 10**30, 10**400,
           -10**400, 2.5]
TEXTS = [None, 5, True, [], {}, "", "   ", MB, "a\ud800b", "a\udfffb", "a\x00b"]
CHOICES = [None, 1, True, "", "maybe", " A", "a", ["A"]]
SAFE_TEXTS = ["\u202eRTL override", "zero\u200bwidth\u200d", "<script>alert(1)</script>", "שלום עולם", "😀 emoji"]

# endpoint -> [(field name as the message says it, kind, a valid value)]
ENDPOINTS = {
    "generate_pair": [("user", "text", KENJI), ("message", "text", "hi"), ("T", "int", 20), ("eta", "number", 10),
                      ("lam", "number", 2), ("max_new_tokens", "int", 8), ("repetition_penalty", "number", 1.1),
                      ("no_repeat_ngram_size", "int", 4)],
    "add_history": [("user", "text", KENJI), ("text", "text", "a note"), ("kind", "choice", "note"),
                    ("sensitive", "flag", False)],
    "chat": [("user", "text", KENJI), ("message", "text", "hi"), ("side_by_side", "flag", True), ("T", "int", 20),
             ("eta", "number", 10), ("lam", "number", 2), ("max_new_tokens", "int", 8),
             ("repetition_penalty", "number", 1.1), ("no_repeat_ngram_size", "int", 4), ("copy_guard", "int", 6),
             ("sigma", "number", 0), ("tau", "number", 0), ("speculate", "int", 1), ("private", "flag", False)],
    "edit_history": [("user", "text", KENJI), ("entry_id", "int", 1), ("text", "text", "an edit"),
                     ("kind", "kind_or_keep", "note"), ("title", "title_or_keep", "t"), ("pinned", "flag_or_keep", False),
                     ("sensitive", "flag_or_keep", False)],
    "delete_history": [("user", "text", KENJI), ("entry_id", "int", 10**6)],
    "history": [("user", "text", KENJI)],
    "create_user": [("name", "text", "Zed")],
    "load_persona": [("persona", "text", KENJI)],
    "create_study": [("name", "text", "s"), ("personas", "personas", [KENJI]), ("prompts", "prompts", ["hi"]),
                     ("settings", "settings", [{"lam": 2}]), ("all_pairs", "flag", False), ("raters", "int", 2),
                     ("pairs_per_rater", "int", 0), ("attention_every", "int", 6), ("max_new_tokens", "int", 8)],
    "study_status": [("study", "int", 1)],
    "cancel_study": [("study", "int", 1)],
    "add_raters": [("study", "int", 1), ("raters", "int", 1)],
    "leaderboard": [("study", "int", 1), ("exclude_flagged", "flag", False)],
    # the raters' page (/study/): every field is checked before the link is looked up
    "study/next_pair": [("study", "int", 1), ("rater", "text", "not-a-link")],
    "study/vote": [("study", "int", 1), ("rater", "text", "not-a-link"), ("pair", "int", 1), ("vote", "choice", "A"),
                   ("comment", "text_or_blank", "")],
    "study/skip": [("study", "int", 1), ("rater", "text", "not-a-link"), ("pair", "int", 1)],
    "study/consent": [("study", "int", 1), ("rater", "text", "not-a-link"), ("prolific_pid", "text_or_blank", "")],
}
OPTIONAL = {"generate_pair": ("T", "eta", "lam", "max_new_tokens", "repetition_penalty", "no_repeat_ngram_size"),
            "add_history": ("kind", "sensitive"), "create_study": ("all_pairs", "raters", "pairs_per_rater", "attention_every",
                                                   "max_new_tokens"), "leaderboard": ("exclude_flagged",),
            "add_raters": ("raters",), "chat": ("side_by_side", "T", "eta", "lam", "max_new_tokens",
                                                "repetition_penalty", "no_repeat_ngram_size", "copy_guard", "sigma",
                                                "tau", "speculate", "private"),
            "edit_history": ("kind", "title", "pinned", "sensitive"), "study/vote": ("comment",),
            "study/consent": ("prolific_pid",)}  # parameters with defaults, filled in when left out
BAD = {"text": TEXTS, "answer": [None, 5, True, [], {}, "a\ud800b", "a\x00b", "x" * 100_001],
       "int": NUMBERS, "number": [v for v in NUMBERS if v != 2.5], "choice": CHOICES,
       "prompts": [None, 5, True, {}, [], "", [5], [""], [MB], ["a\ud800b"], ["x"] * 30, ["a", "a"]],
       "personas": [None, 5, True, {}, [], "", [5], [""], ["ghost"], [MB], ["a\ud800b"], [KENJI] * 11, "ghost"],
       "settings": [None, 5, True, [], "", [5], [{"lam": 9}], [{"zeta": 1}], [{"T": 2.5}], [{"label": "unsteered"}],
                    [{}] * 9, "lam", MB, [{"lam": 10**400}], [{"gate": "yes"}], [{"label": 5}], [{"lam": 2}, {"T": 0}]],
       "flag": [None, 1, 0, "yes", "", [], {}],
       # edit_history: None keeps the entry's value, so it is not bad there
       "kind_or_keep": [v for v in CHOICES if v is not None], "title_or_keep": [5, True, [], {}, "x" * 201, "a\x00b"],
       "flag_or_keep": [1, 0, "yes", "", [], {}],
       "text_or_blank": [5, True, [], {}, "a\ud800b", "a\x00b", "x" * 5000]}  # optional text: blank is fine


def corpus():
    for name, fields in ENDPOINTS.items():
        good = [v for _, _, v in fields]
        for i, (field, kind, _) in enumerate(fields):
            for bad in BAD[kind]:
                yield name, field, good[:i] + [bad] + good[i + 1:]
        required = [f for f in fields if f[0] not in OPTIONAL.get(name, ())]
        if required:
            yield name, required[-1][0], good[:len(required) - 1]  # too few arguments: the first missing is named
    for bad in ("ghost", *SAFE_TEXTS):  # well-formed text, but no such user
        yield "history", "user", [bad]


CASES = list(corpus())


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    db = tmp_path_factory.mktemp("bad") / "costeer.db"
    UserStore(db).import_file("assets/personas/kenji_osaka.json")
    with running_app(db) as url:
        yield url, db


def call(url: str, endpoint: str, data: list) -> tuple[str, object]:
    """POST then read the event stream, as any HTTP client can; returns (event, payload)."""
    body = json.dumps({"data": data}).encode()  # NaN and Infinity go as JSON's usual extensions
    page, _, endpoint = endpoint.rpartition("/")  # "study/vote": the raters' page
    base = f"{url}{page + '/' if page else ''}gradio_api/call/{endpoint}"
    req = urllib.request.Request(base, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        event_id = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(f"{base}/{event_id}", timeout=300) as r:
        lines = r.read().decode().splitlines()
    event = [ln.split(": ", 1)[1] for ln in lines if ln.startswith("event: ")][-1]
    payload = [ln.split(": ", 1)[1] for ln in lines if ln.startswith("data: ")][-1]
    return event, json.loads(payload)


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 117


@pytest.mark.slow
def test_every_bad_api_input_is_refused_in_words(app):
    url, db = app
    store = UserStore(db)
    before = (len(store.entries(KENJI)), len(store.votes()), store.users(), store.studies.studies())
    unnamed = []
    for endpoint, field, data in CASES:
        event, payload = call(url, endpoint, data)
        message = payload.get("error") if isinstance(payload, dict) else None
        if event != "error" or not message or field not in message:
            unnamed.append((endpoint, field, repr(data)[:80], event, str(payload)[:120]))
    assert not unnamed, f"{len(unnamed)} of {len(CASES)} not refused with the field's name: {unnamed[:5]}"
    assert (len(store.entries(KENJI)), len(store.votes()), store.users(), store.studies.studies()) == before  # nothing written
    log = open(f"{db}.app.log", encoding="utf-8").read()
    assert "Traceback" not in log
    assert log.count("app: refused ") >= len(CASES)


def test_the_api_takes_exactly_the_ui_ranges(app):
    url, _ = app
    for data, field in (([KENJI, "hi", 100.5], "T"), ([KENJI, "hi", 101], "T"), ([KENJI, "hi", 20, 10, 1e-300], "lam"),
                        ([KENJI, "hi", 20, 10, 2, 4096], "max_new_tokens"), ([KENJI, "hi", True], "T")):
        event, payload = call(url, "generate_pair", data)
        assert event == "error" and field in payload["error"], (data, payload)
    event, payload = call(url, "generate_pair", [KENJI, "\u202eRTL and zero\u200bwidth", 1, 0.5, 5, 8, 1, 0])
    assert event == "complete" and len(payload[0]) == 2  # the edges of the ranges, and odd but valid text, work
    for endpoint, data, said in (("delete_history", [KENJI, 0], "entry_id: must be an integer ≥ 1, got 0"),
                                 ("chat", [KENJI, "hi", True, 20, 10, 2, 8, 1.1, 4, 1], "copy_guard: must be 0 (off) or "
                                                                                     "an integer in [2, 32], got 1")):
        event, payload = call(url, endpoint, data)  # the argument's own name, a range as people write it
        assert event == "error" and payload["error"] == said, payload
    event, payload = call(url, "add_history", [KENJI, "<script>alert(1)</script>", "note"])
    assert event == "complete" and UserStore(app[1]).entry(payload[0])["text"] == "<script>alert(1)</script>"


# -- the UI handlers, in process ------------------------------------------------------------------
@pytest.fixture(scope="module")
def studio(engine, tmp_path_factory):
    s = Studio(engine, UserStore(tmp_path_factory.mktemp("h") / "c.db"))
    s.load_persona(KENJI)
    return s


CHAT = [("user", "text", KENJI), ("message", "text", "hi"), ("side by side", "flag", True), ("T", "int", 20),
        ("eta", "number", 10), ("lam", "number", 2), ("alpha", "number", 2), ("beta", "number", 1),
        ("temperature", "number", 0), ("top_p", "number", 1), ("seed", "seed", None), ("max_new_tokens", "int", 8),
        ("repetition_penalty", "number", 1.1), ("no_repeat_ngram_size", "int", 4), ("confidence gate", "flag", False),
        ("gate_threshold", "number", 0.1), ("gate_patience", "int", 3), ("gate mode", "choice", "paper"),
        ("noise sigma", "number", 0), ("clip tau", "number", 0), ("speculate K", "int", 1)]
HANDLER_BAD = {**BAD, "flag": [None, 1, "yes", []], "seed": ["x", True, -1, 2.5, math.inf, 2**40]}


def handler_cases():
    for i, (field, kind, _) in enumerate(CHAT):
        for bad in HANDLER_BAD[kind]:
            args = [v for _, _, v in CHAT]
            args[i] = bad
            yield "chat", field, lambda s, a=args: list(s.chat(*a, new_conversation(), request=SimpleNamespace(session_hash="c")))
    for bad in TEXTS:
        yield "create_user", "new user name", lambda s, b=bad: s.create_user(b)
        yield "add_entry", "text", lambda s, b=bad: s.add_entry(KENJI, b, "note", "", False, False)
        yield "preview_context", "message", lambda s, b=bad: s.preview_context(KENJI, b)
        yield "cast_vote", "rater", lambda s, b=bad: s.cast_vote(b, {"user": KENJI, "message": "m", "a": "a", "b": "b",
                                                                   "steered_side": "A", "params": {}}, "A")
        yield "explore", "values", lambda s, b=bad: s.explore(KENJI, "hi", "lam", b, 20, 10, 2, 2, 1, 8,
                                                             progress=lambda *a, **k: None)
    for bad in NUMBERS:
        yield "update_entry", "entry id", lambda s, b=bad: s.update_entry(KENJI, b, "t", "note", "", False, False)
        yield "ask_delete", "entry id", lambda s, b=bad: s.ask_delete(KENJI, b)
        yield "ab_generate", "T", lambda s, b=bad: s.ab_generate(KENJI, "hi", b, 10, 2, 2, 1, 0, 1, None, 8)
    for bad in (1, 33, -1, 2.5, True, "6", math.nan, 10**400, None):
        yield "chat", "copy guard", lambda s, b=bad: list(s.chat(*[v for _, _, v in CHAT], new_conversation(), b,
                                                                request=SimpleNamespace(session_hash="c")))
        yield "generate_pair", "copy guard", lambda s, b=bad: s.generate_pair(KENJI, "hi", max_new_tokens=8, copy_guard=b)
        yield "ab_generate", "copy guard", lambda s, b=bad: s.ab_generate(KENJI, "hi", 20, 10, 2, 2, 1, 0, 1, None, 8,
                                                                         1.1, 4, b)
    for bad in HANDLER_BAD["flag"]:
        yield "chat", "private", lambda s, b=bad: list(s.chat(*[v for _, _, v in CHAT], new_conversation(), private=b,
                                                             request=SimpleNamespace(session_hash="c")))
    for bad in CHOICES:
        yield "add_entry", "kind", lambda s, b=bad: s.add_entry(KENJI, "ok", b, "", False, False)
        yield "import_history", "import mode", lambda s, b=bad: s.import_history(KENJI, "x.json", b, False)
        yield "explore", "sweep", lambda s, b=bad: s.explore(KENJI, "hi", b, "1", 20, 10, 2, 2, 1, 8,
                                                            progress=lambda *a, **k: None)
    for bad in ("ghost", "1, x", "0, 9", ", ,", "1,2,3,4,5,6,7,8,9", "nan", "inf"):
        yield "explore", "values" if bad != "ghost" else "user", \
            lambda s, b=bad: s.explore("ghost" if b == "ghost" else KENJI, "hi", "lam", "1" if b == "ghost" else b,
                                       20, 10, 2, 2, 1, 8, progress=lambda *a, **k: None)


def test_every_bad_handler_input_is_refused_in_words(studio):
    cases = list(handler_cases())
    assert len(cases) >= 117
    before = (len(studio.store.entries(KENJI)), len(studio.store.votes()), studio.store.users())
    unnamed = []
    for handler, field, run in cases:
        try:
            run(studio)
            unnamed.append((handler, field, "accepted"))
        except (Refused, StoreError) as exc:
            if not str(exc).startswith(field) and f"{field}:" not in str(exc) and field not in str(exc):
                unnamed.append((handler, field, str(exc)[:100]))
    assert not unnamed, unnamed[:5]
    assert (len(studio.store.entries(KENJI)), len(studio.store.votes()), studio.store.users()) == before
    assert studio.session(SimpleNamespace(session_hash="c")).running is None
