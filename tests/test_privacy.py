"""The privacy audit and the two defences, on the real bundled model and a real SQLite file.

The deny-list's guarantee (p <= b on the deny-listed ids at every step) is checked over real
generations; the cap's arithmetic on random tensors, where a case that the clamp alone gets wrong
is built on purpose."""
import json
import math

import pytest
import torch

from conftest import ROOT, run_cli
from costeer.evaluation.audit import summarize_privacy
from costeer.engine.decoding import CloudTranscript, Defences, Sampling
from costeer.steering.defences import Defended, cap_at_base
from costeer.evaluation.eval import method_defences, method_spec
from costeer.steering.policy import SteeringParams
from costeer.evaluation.privacy import (PersonaAttacker, audit_reply, deny_list, deny_token_ids, deny_words, distinctive_terms, exposure,
                             term_spans)
from costeer.steering.processors import ClosedForm
from costeer.engine.spec import DecodeSpec
from user_store import StoreError, UserStore
from user_store.schema import migrate

PERSONAS = ROOT / "assets" / "personas"
KENJI = "Kenji (Osaka, vegetarian, jazz)"


def persona(name):
    return json.loads((PERSONAS / name).read_text(encoding="utf-8"))


@pytest.fixture
def store(tmp_path):
    s = UserStore(tmp_path / "p.db")
    for f in ("kenji_osaka.json", "jay_gamer.json", "prof_moreau_gnn.json"):
        s.import_user(persona(f))
    return s


def test_distinctive_terms_are_rare_not_typed_and_name_their_entry(store):
    entries = store.entries(KENJI)
    terms = distinctive_terms(entries)
    assert {"nakazakicho", "kissa", "tennoji", "shojin"} <= set(terms)
    assert not {"jazz", "quiet", "river", "music", "the"} & set(terms)  # common words are not personal
    source = next(e for e in entries if "Nakazakicho" in e["text"])
    assert terms["nakazakicho"].entry_id == source["id"] and terms["nakazakicho"].entry_title == source["title"]
    typed = distinctive_terms(entries, ["Is there a kissa near Nakazakicho?"])
    assert "nakazakicho" not in typed and "kissa" not in typed and "tennoji" in typed  # the user said those


def test_exposure_finds_terms_across_case_and_punctuation(store):
    terms = distinctive_terms(store.entries(KENJI))
    found = exposure(terms, "Try a KISSA, then walk to Nakazakicho. Tennoji-style food.")
    assert {t.text for t in found.exposed} == {"kissa", "nakazakicho", "tennoji"}
    assert found.share == pytest.approx(3 / len(terms))
    spans = term_spans("kissa and Kissa", found.exposed)
    assert [(a, b) for a, b, _ in spans] == [(0, 5), (10, 15)]


def test_cap_keeps_a_distribution_and_the_clamp_alone_would_not_do():
    torch.manual_seed(0)
    b = torch.log_softmax(torch.randn(500) * 2, -1)
    ids = torch.arange(10)
    # d <= 0 on the ids already (the clamp's job), strongly negative on the rest: the
    # renormalization alone lifts the ids above b
    d = torch.full((500,), -3.0)
    d[ids] = 0.0
    p = ClosedForm(SteeringParams())(b, d)
    assert bool((p[ids] > b[ids]).all())  # what the clamp alone leaves
    q = cap_at_base(p, b, ids)
    assert float(q.exp().sum()) == pytest.approx(1.0, abs=1e-5)
    assert bool((q[ids] <= b[ids] + 1e-6).all())
    outside = torch.ones(500, dtype=torch.bool)
    outside[ids] = False
    assert bool((q[outside] >= p[outside] - 1e-6).all())  # the rest only gain
    for seed in range(20):  # and on random deltas through the whole processor
        g = torch.Generator().manual_seed(seed)
        d = torch.randn(500, generator=g) * 3
        steer = Defended(ClosedForm(SteeringParams()), Defences(deny_ids=tuple(range(0, 500, 7))), seed)
        q = steer(b, d)
        deny = torch.arange(0, 500, 7)
        assert bool((q[deny] <= b[deny] + 1e-6).all()) and float(q.exp().sum()) == pytest.approx(1.0, abs=1e-5)


def test_every_word_of_a_sensitive_entry_is_listed_but_function_words_and_letters(lm):
    """Issue 23: only rare words were listed, so "HIV" never was and a reply held " HIV" while the
    panel said "held"; and the scraps of " B|ik|t|arv|y" put the letters t, y, b on the list."""
    tok = lm.tokenizer
    entry = {"title": "Health", "text": "My HIV diagnosis: I take Biktarvy. Pregnant? No. Cancer screening and an "
             "abortion in 2019.", "sensitive": True}
    listed = {tok.decode([i]) for i in deny_list([entry], tok)}
    for word in ("HIV", "diagnosis", "Pregnant", "pregnant", "Cancer", "cancer", "abortion", "screening"):
        assert f" {word}" in listed or word in listed, word
    for scrap in ("t", "y", "b", "B", " B", " b", " t", " y"):
        assert scrap not in listed, scrap
    for function_word in (" my", " and", " the", " in", " an", "My", " I"):
        assert function_word not in listed, function_word
    assert deny_list([{**entry, "sensitive": False}], tok) == []


def test_a_sensitive_number_lists_its_digits(engine):
    """The bundled tokenizer spells numbers digit by digit: a PIN is held back only by its digits."""
    tok = engine.cloud.tokenizer
    listed = {tok.decode([i]) for i in deny_list([{"text": "My PIN is 4921.", "sensitive": True}], tok)}
    assert {"4", "9", "2", "1"} <= listed and " PIN" in listed and not {"3", "5", "0"} & listed


@pytest.mark.slow
def test_deny_list_guarantee_holds_at_every_step_of_real_generations(engine, store):
    entries = store.entries(KENJI)
    for e in entries:
        store.update_entry(e["id"], sensitive=True)
    deny = deny_list(store.entries(KENJI), engine.cloud.tokenizer)
    assert len(deny) > 20 and deny == deny_token_ids(engine.cloud.tokenizer, deny_words(entries))
    context = store.build_context(KENJI, "Plan my Friday evening")
    terms = distinctive_terms(entries)
    steps, plain_exposed = 0, 0
    for prompt in ("Suggest a plan for my Friday evening.", "Plan a day trip for me.", "Recommend some music."):
        messages = [{"role": "user", "content": prompt}]
        plain = engine.generate(messages, context, DecodeSpec("steered", sampling=Sampling(max_new_tokens=48)))
        plain_exposed += len(exposure(terms, plain["texts"]["steered"]).exposed)
        spec = DecodeSpec("side_by_side", sampling=Sampling(max_new_tokens=48), defences=Defences(deny_ids=deny))
        for ev in engine.stream(messages, context, spec):
            if ev.stream == "steered" and not ev.device_skipped:
                assert ev.deny_margin <= 1e-6, (prompt, ev.step, ev.deny_margin)
                steps += 1
    assert steps >= 100
    assert plain_exposed >= 1  # not vacuous: unprotected, steering does write these words


def test_noise_is_seeded_and_clipped(engine):
    messages = [{"role": "user", "content": "Plan my Friday evening."}]
    context = "Loves jazz kissa in Nakazakicho. Strict vegetarian."
    noisy = [DecodeSpec("steered", sampling=Sampling(max_new_tokens=16), defences=Defences(sigma=1.0, seed=s))
             for s in (1, 1, 2)]
    runs = [engine.generate(messages, context, spec)["texts"]["steered"] for spec in noisy]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    clip = Defended(ClosedForm(SteeringParams()), Defences(tau=0.5), 0)
    assert float(clip.delta(torch.tensor([-3.0, 0.2, 9.0])).abs().max()) == pytest.approx(0.5)
    for bad, words in ((dict(sigma=-1), "sigma must be"), (dict(sigma=math.nan), "sigma must be"),
                       (dict(tau=0), "tau must be"), (dict(tau=True), "tau must be")):
        with pytest.raises(ValueError, match=words):
            Defences(**bad)


def test_attacker_tells_a_personas_own_words_from_the_others(lm, store):
    attacker = PersonaAttacker(lm)
    profiles = {u: attacker.profile(store.entries(u)) for u in store.users()}
    assert all(profiles.values()) and len(profiles) == 3
    reply = lm.tokenizer("Vinyl night at a jazz kissa in Nakazakicho, then vegetable ramen.",
                         add_special_tokens=False)["input_ids"]
    guess = attacker.guess([{"role": "user", "content": "Plan my Friday evening."}], reply, profiles)
    assert guess.name == KENJI and sum(guess.posterior.values()) == pytest.approx(1.0)
    assert guess.posterior[KENJI] > 1 / 3



def test_the_calibrated_attacker_learns_nothing_from_the_clouds_own_answer(lm, store):
    """Against the cloud's own answer, every profile's lift cancels: all candidates tie and the
    attacker earns chance exactly. A reply in Kenji's words still points at Kenji."""
    attacker = PersonaAttacker(lm)
    profiles = {u: attacker.profile(store.entries(u)) for u in store.users()}
    messages = [{"role": "user", "content": "Plan my Friday evening."}]
    own = lm.tokenizer("Dinner with friends, then a movie.", add_special_tokens=False)["input_ids"]
    tie = attacker.guess(messages, own, profiles, reference_ids=own)
    assert tie.calibrated and set(tie.scores.values()) == {0.0}
    assert tie.credit(KENJI) == pytest.approx(1 / 3) and tie.credit(KENJI, 3) == 1.0
    kenji = lm.tokenizer("Vinyl night at a jazz kissa in Nakazakicho, then vegetable ramen.",
                         add_special_tokens=False)["input_ids"]
    guess = attacker.guess(messages, kenji, profiles, reference_ids=own)
    assert guess.name == KENJI and guess.credit(KENJI) == 1.0 and guess.scores[KENJI] > 0


def test_guess_credit_orders_ties_at_random():
    from costeer.evaluation.privacy import Guess

    g = Guess("a", {"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25}, {"a": 1.0, "b": 1.0, "c": 0.0, "d": -2.0})
    assert g.credit("a") == 0.5 and g.credit("b") == 0.5 and g.credit("c") == 0.0 and g.credit("c", 3) == 1.0
    assert g.credit("d", 3) == 0.0 and g.credit("a", 2) == 1.0


def test_reply_audit_of_a_real_side_by_side_turn(engine, store):
    messages = [{"role": "user", "content": "Suggest a plan for my Friday evening."}]
    transcript = CloudTranscript()
    spec = DecodeSpec("side_by_side", sampling=Sampling(max_new_tokens=32))
    engine.generate(messages, store.build_context(KENJI, messages[0]["content"]), spec, transcript)
    audit = audit_reply(store.entries(KENJI), messages, transcript, engine.cloud.tokenizer)
    reply = {s: engine.cloud.tokenizer.decode(transcript.token_ids[s], skip_special_tokens=True) for s in transcript.token_ids}
    terms = distinctive_terms(store.entries(KENJI), [messages[0]["content"]])
    assert audit.steered.share == exposure(terms, transcript.prompt_text["steered"] + reply["steered"]).share
    assert audit.attributable == pytest.approx(audit.steered.share - audit.unsteered.share)


def test_sensitive_flag_migrates_round_trips_and_is_never_dropped(tmp_path):
    import sqlite_utils

    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    migrate(db, target=3)  # a store from before the flag
    db["users"].insert({"name": "ana", "created_at": "2026-01-01"})
    db["entries"].insert({"user_id": 1, "kind": "note", "text": "Lives in Nakazakicho", "created_at": "x", "updated_at": "x"})
    db.close()
    s = UserStore(path)
    [e] = s.entries("ana")
    assert e["sensitive"] == 0
    exported = s.export_user("ana")
    exported["entries"][0]["sensitive"] = True
    assert s.import_user(exported)["skipped"] == 1  # same entry: not added again, but now protected
    assert s.entries("ana")[0]["sensitive"] == 1
    s.import_user({"user": "ana", "entries": [{"text": "Lives in Nakazakicho", "kind": "note", "sensitive": False}]})
    assert s.entries("ana")[0]["sensitive"] == 1  # an import without the flag does not lift it
    with pytest.raises(StoreError, match="entry 0: sensitive must be true or false"):
        s.import_user({"user": "ana", "entries": [{"text": "t", "sensitive": "yes"}]})
    assert len(s.entries("ana")) == 1  # nothing half-written
    assert s.export_user("ana")["entries"][0]["sensitive"] is True


def test_method_names_for_the_defences():
    assert method_defences("costeer:sigma=0.3,tau=2") == {"sigma": 0.3, "tau": 2.0, "deny": False, "copy": 0,
                                                          "private": None}
    assert method_defences("costeer:deny=all")["deny"] is True and method_spec("costeer:deny=all")[0] == SteeringParams()
    for bad, words in (("costeer:sigma=-1", "sigma must be a number in"), ("costeer:deny=some", "deny must be 'all'"),
                       ("costeer:copy=1", r"copy guard must be an integer in \[2, 32\]"),
                       ("costeer:tau=x", "tau must be a number")):
        with pytest.raises(ValueError, match=words):
            method_spec(bad)


def test_privacy_summary_arithmetic_on_known_inputs():
    def r(id, method, share, correct, margin=None):
        return {"id": id, "method": method, "exposure": share, "exposed": ["x"] * int(share * 10), "terms": 10,
                "attacker_correct": float(correct), "attacker_top3": 1.0, "attacker_posterior": 0.5, "candidates": 4,
                "deny_margin": margin}
    rows = [r("1", "llm", 0.0, False), r("2", "llm", 0.1, True), r("1", "costeer", 0.3, True),
            r("2", "costeer", 0.2, True), r("1", "costeer:deny=all", 0.1, False, -0.5),
            r("2", "costeer:deny=all", 0.0, False, 0.0), {"id": "1", "method": "slm_ctx", "exposure": None}]
    s = summarize_privacy(rows, ["llm", "costeer", "costeer:deny=all", "slm_ctx"])
    assert s["llm"]["exposure"] == pytest.approx(0.05) and s["llm"]["attacker_accuracy"] == pytest.approx(0.5)
    assert s["costeer"]["exposure_vs_llm"] == pytest.approx(0.2) and s["costeer"]["attacker_chance"] == 0.25
    assert s["costeer:deny=all"]["deny_margin_max"] == 0.0 and "slm_ctx" not in s
    assert s["costeer"]["marginal_leakage"] == pytest.approx(0.5) and s["costeer:deny=all"]["marginal_leakage"] == pytest.approx(-0.5)
    assert s["costeer"]["attacker_top3"] == 1.0 and "marginal_leakage" not in s["llm"]


@pytest.mark.slow
def test_eval_privacy_cli_on_two_personas(tmp_path):
    rows = [json.loads(line) for line in (ROOT / "assets" / "eval" / "sample.jsonl").read_text().splitlines()]
    data = tmp_path / "two.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in (rows[0], rows[5])))
    plot = tmp_path / "p.png"
    out = run_cli(["-m", "costeer", "eval", "--data", str(data), "--methods", "llm", "costeer", "costeer:deny=all", "--sweep", "sigma=0.5",
                   "--max-new-tokens", "8", "--plot", str(plot), "--json", "--no-progress"])
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    p = result["privacy"]
    assert set(p) == {"llm", "costeer", "costeer:deny=all", "costeer:sigma=0.5"}
    assert all(e["attacker_chance"] == 0.5 and 0 <= e["attacker_accuracy"] <= 1 for e in p.values())
    assert p["llm"]["attacker_accuracy"] == 0.5  # greedy: the llm answer is the cloud's own, a tie of two
    assert p["costeer:deny=all"]["deny_margin_max"] <= 1e-6
    assert plot.stat().st_size > 10_000 and result["attacker_model"] == "the cloud model"
    bad = run_cli(["-m", "costeer", "eval", "--data", str(data), "--sweep", "sigma=-2", "--no-progress"])
    assert bad.returncode == 2 and "sigma must be a number in [0, 10]" in bad.stderr and "Traceback" not in bad.stderr
