"""The app's handlers with the real engine and a real SQLite file (no server needed)."""
import csv
import json

import gradio as gr
import pytest

from ui.handlers import Studio, new_conversation, persona_files
from user_store import UserStore

KENJI = "Kenji (Osaka, vegetarian, jazz)"


@pytest.fixture
def studio(engine, tmp_path):
    s = Studio(engine, UserStore(tmp_path / "c.db"))
    s.load_persona(KENJI)
    return s


def _chat(studio, message, conv, side=True, user=KENJI, **kw):
    args = dict(T=20, eta=10, lam=2, alpha=2, beta=1, temperature=0, top_p=1, seed=None, max_new_tokens=16)
    args.update(kw)
    *_, last = studio.chat(user, message, side, *args.values(), conv)
    return last


def test_chat_streams_and_keeps_two_conversations(studio):
    steps = list(studio.chat(KENJI, "Plan my Friday evening", True, 20, 10, 2, 2, 1, 0, 1, None, 12, new_conversation()))
    assert len(steps) > 2  # streamed token by token
    u_chat, s_chat, tokens, privacy, conv, box = steps[-1]
    assert box == ""
    assert u_chat[-1]["role"] == s_chat[-1]["role"] == "assistant"
    assert u_chat[-1]["content"] != s_chat[-1]["content"]
    assert "Sent to the cloud" in privacy and "Strict vegetarian" in privacy
    assert "Strict vegetarian" not in privacy.split("Stayed on your device")[0]  # not on the cloud side
    assert "class='tok" in tokens
    u2, s2, *_, conv2, _ = _chat(studio, "Something quieter?", conv)
    assert len(u2) == len(s2) == 4
    assert u2[1] == u_chat[1] and s2[1] == s_chat[1]  # each column continues its own conversation


def test_chat_without_side_by_side_runs_steered_only(studio):
    u_chat, s_chat, *_ = _chat(studio, "Plan my Friday evening", new_conversation(), side=False)
    assert u_chat == [] and s_chat[-1]["content"].strip()


@pytest.mark.parametrize("user, message, kw, words", [
    (None, "hi", {}, "user: choose a user"),
    (KENJI, "  ", {}, "message: type something first"),
    (KENJI, "x" * 4001, {}, "message: at most 4000 characters"),
    (KENJI, "hi", {"T": 0}, "T must be an integer in [1, 1000]"),
    (KENJI, "hi", {"lam": 0}, "lam must be > 0"),
    (KENJI, "hi", {"temperature": -1}, "temperature must be in [0, 5]"),
])
def test_chat_bad_input_is_a_visible_error(studio, user, message, kw, words):
    with pytest.raises(gr.Error, match=words.replace("[", r"\[").replace("]", r"\]")):
        _chat(studio, message, new_conversation(), user=user, **kw)


def test_a_conversation_longer_than_the_model_is_a_clear_error(studio):
    turn = "word " * 700
    conv = {k: [{"role": r, "content": turn} for _ in range(7) for r in ("user", "assistant")]
            for k in ("steered", "unsteered")}
    with pytest.raises(gr.Error, match="conversation too long: .* exceed the cloud model's context of 8192 tokens"):
        _chat(studio, "one more question", conv)
    assert _chat(studio, "Plan my Friday evening", new_conversation())[1][-1]["content"]  # still works


def test_strength_text_warns_when_extreme():
    assert "C = 1.783" in Studio.strength(20, 10, 2, 2, 1)
    assert "Extreme steering" in Studio.strength(20, 10, 0.5, 2, 1)
    assert "Invalid setting" in Studio.strength(20, 0, 2, 2, 1) and "eta" in Studio.strength(20, 0, 2, 2, 1)


def test_history_editing(studio):
    rows = studio.history_rows(KENJI)
    assert len(rows) == 10 and rows[0][4] is True  # pinned first
    rows, box = studio.add_entry(KENJI, "Allergic to peanuts", "profile", "Allergy", True)
    new = [r for r in rows if r[3] == "Allergic to peanuts"][0]
    assert box == "" and new[4] is True
    rows = studio.update_entry(KENJI, new[0], "Allergic to peanuts and cashews", "profile", "Allergy", False)
    assert [r for r in rows if r[0] == new[0]][0][3].endswith("cashews")
    with pytest.raises(gr.Error, match="text must be non-empty"):
        studio.update_entry(KENJI, new[0], " ", "profile", "", False)
    rows = studio.delete_entry(KENJI, new[0])
    assert all(r[0] != new[0] for r in rows)
    studio.store.add_user("other")
    other = studio.store.add_entry("other", "not yours")
    with pytest.raises(gr.Error, match="is not one of"):
        studio.delete_entry(KENJI, other)
    assert "Strict vegetarian" in studio.preview_context(KENJI, "dinner ideas")


def test_import_export_through_the_ui(studio, tmp_path):
    exported = studio.export_history(KENJI)
    data = json.loads(open(exported, encoding="utf-8").read())
    assert data["user"] == KENJI and len(data["entries"]) == 10
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(gr.Error, match="not valid JSON"):
        studio.import_history(KENJI, str(broken), "replace")
    assert len(studio.history_rows(KENJI)) == 10  # nothing lost
    with pytest.raises(gr.Error, match="choose a .json or .jsonl file"):
        studio.import_history(KENJI, None, "merge")


def test_blind_ab_vote_results_and_csv(studio):
    seen_sides = set()
    for i in range(6):
        a, b, trial, note = studio.ab_generate(KENJI, "Plan my Friday evening", 20, 10, 2, 2, 1, 0, 1, None, 8)
        seen_sides.add(trial["steered_side"])
        steered = a if trial["steered_side"] == "A" else b
        assert trial["a"] == a and trial["b"] == b and steered != (b if steered == a else a)
        reveal, cleared = studio.cast_vote("rita", trial, ["A", "B", "tie", "both_bad", "A", "B"][i])
        assert "was steered (CoSteer)" in reveal and cleared is None
    assert seen_sides == {"A", "B"}  # the order is randomized per trial
    with pytest.raises(gr.Error, match="generate a pair"):
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


def test_parameter_explorer(studio):
    rows, fig = studio.explore(KENJI, "Plan my Friday evening", "lam", "1, 2", 20, 10, 2, 2, 1, 8,
                               progress=lambda *a, **k: None)
    assert [r[0] for r in rows] == ["unsteered", "lam = 1", "lam = 2"]
    assert rows[1][1] > rows[2][1]  # C falls as lambda rises
    assert all(0 <= r[2] <= 1 for r in rows) and fig is not None
    with pytest.raises(gr.Error, match=r"each in \[0.1, 5.0\]"):
        studio.explore(KENJI, "hi", "lam", "0, 9", 20, 10, 2, 2, 1, 8, progress=lambda *a, **k: None)


def test_personas_are_distinct():
    names = list(persona_files())
    assert len(names) == 3 and len(set(names)) == 3
