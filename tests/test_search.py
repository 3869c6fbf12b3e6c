"""Retrieval and the personal context: BM25, FTS syntax safety, Japanese, isolation, budget."""
import pytest

from conftest import ROOT

from user_store import UserStore

HOSTILE = ['"', 'jazz*', 'NEAR(jazz osaka)', '-jazz', 'title:jazz', '((jazz', 'jazz AND', 'OR OR',
           '"unbalanced', "'; DROP TABLE entries; --", '*', '^jazz', 'jazz + osaka', '{title}: x', 'AND', 'NOT']


@pytest.fixture
def store(tmp_path):
    s = UserStore(tmp_path / "c.db")
    for user in ("ana", "anna"):  # look-alike users with look-alike data
        s.add_user(user)
    s.add_entry("ana", "I love jazz clubs in Osaka", kind="profile", pinned=True)
    s.add_entry("ana", "Vegetarian ramen with miso broth", kind="preference")
    s.add_entry("ana", "Jazz jazz jazz: Bill Evans and jazz piano trios", kind="note")
    s.add_entry("ana", "Gardening tips for tomatoes", kind="note")
    s.add_entry("anna", "I love jazz clubs in Osaka SECRET-ANNA", kind="profile", pinned=True)
    s.add_entry("anna", "Jazz piano trios SECRET-ANNA", kind="note")
    yield s
    s.close()


def test_bm25_ranks_the_more_relevant_first(store):
    hits = store.search("ana", "jazz piano", k=5)
    assert hits[0]["text"].startswith("Jazz jazz jazz")
    assert all("SECRET-ANNA" not in h["text"] for h in hits)
    assert len(store.search("ana", "jazz", k=1)) == 1


@pytest.mark.parametrize("query", HOSTILE)
def test_fts_syntax_never_raises(store, query):
    store.search("ana", query)
    store.build_context("ana", query)


def test_no_terms_no_hits(store):
    assert store.search("ana", "") == [] and store.search("ana", "a b") == []


def test_isolation_between_look_alike_users(store):
    for q in ("jazz", "SECRET", "ANNA", "piano trios Osaka"):
        assert all("SECRET-ANNA" not in h["text"] for h in store.search("ana", q, k=20))
        assert "SECRET-ANNA" not in store.build_context("ana", q)
    assert "SECRET-ANNA" not in str(store.export_user("ana"))
    assert all("SECRET-ANNA" in h["text"] for h in store.search("anna", "jazz"))


def test_japanese_and_emoji(store):
    store.add_user("ken")
    store.add_entry("ken", "私は大阪に住んでいて、ジャズが大好きです。🎷", kind="profile")
    store.add_entry("ken", "週末は京都でお寺を巡ります", kind="note")
    assert store.search("ken", "ジャズ")[0]["text"].startswith("私は大阪")
    assert store.search("ken", "大阪")[0]["text"].startswith("私は大阪")  # two characters: below a trigram
    assert store.search("ken", "おすすめのジャズバーは？")[0]["text"].startswith("私は大阪")
    assert store.search("ken", "🎷 ジャズ")[0]["text"].endswith("🎷")
    exported = store.export_user("ken")
    assert exported["entries"][0]["text"] == "私は大阪に住んでいて、ジャズが大好きです。🎷"


def test_search_follows_updates_and_deletes(store):
    eid = store.add_entry("ana", "Collects vintage typewriters", kind="note")
    assert store.search("ana", "typewriters")[0]["id"] == eid
    store.update_entry(eid, text="Collects vintage cameras")
    assert store.search("ana", "typewriters") == []
    assert store.search("ana", "cameras")[0]["id"] == eid
    store.delete_entry(eid)
    assert store.search("ana", "cameras") == []


def test_context_order_tags_and_budget(store):
    ctx = store.build_context("ana", "ramen", max_tokens=512)
    lines = ctx.splitlines()
    assert lines[0] == "- I love jazz clubs in Osaka"  # pinned first
    assert lines[1] == "- Vegetarian ramen with miso broth"  # then the best match
    assert len(lines) == 2  # entries that match nothing stay out
    small = store.build_context("ana", "ramen", max_tokens=10)
    assert len(small.split()) <= 10
    assert small.startswith("- I love jazz clubs in Osaka")
    assert store.build_context("ana", "ramen", max_tokens=10) == small  # deterministic


def test_profile_entries_always_count(store):
    store.add_user("zed")
    store.add_entry("zed", "Vegan, lives in Lyon", kind="profile")
    store.add_entry("zed", "Collects stamps", kind="note")
    assert store.build_context("zed", "plan my Friday") == "- Vegan, lives in Lyon"


def test_context_with_a_custom_counter(store):
    chars = store.build_context("ana", "ramen", max_tokens=60, count_tokens=len)
    assert len(chars) <= 60 and chars.startswith("- I love jazz")


# -- retrieval by meaning (user_store/embeddings.py): hybrid with the keyword search ------------

def test_kenji_cook_tonight_context_holds_his_food_entry(tmp_path):
    """"What should I cook tonight?" shares no word with Kenji's Food entry; keywords alone missed it."""
    s = UserStore(tmp_path / "k.db")
    user = s.import_file(ROOT / "assets" / "personas" / "kenji_osaka.json")["user"]
    message = "What should I cook tonight?"
    assert all(e["title"] != "Food" for e in s.search(user, message, k=20))
    used = [e["title"] for e in s.context_entries(user, message)]
    assert "Food" in used and used[:2] == ["About me", "Style"]  # pinned first, as before
    assert "No meat, no fish" in s.build_context(user, message)
    s.close()


def test_a_new_users_one_entry_reaches_a_related_message_and_not_an_unrelated_one(tmp_path):
    s = UserStore(tmp_path / "n.db")
    s.add_user("new")
    s.add_entry("new", "I only eat vegetarian food and I love jazz in Osaka.", kind="preference")
    assert "vegetarian" in s.build_context("new", "Suggest a plan for my Friday evening.")
    assert s.build_context("new", "How do I fix a flat tyre?") == ""
    s.close()


def vector_rows(s):
    return {r[0]: r[1] for r in s.db.execute("SELECT entry_id, vector FROM entry_vectors").fetchall()}


def test_vectors_follow_add_edit_import_and_delete(store):
    eid = store.add_entry("ana", "Collects vintage typewriters", kind="note")
    before = vector_rows(store)[eid]
    store.update_entry(eid, pinned=True)  # not a change of wording: the vector stays
    assert vector_rows(store)[eid] == before
    store.update_entry(eid, text="Collects vintage cameras")
    assert vector_rows(store)[eid] != before
    assert store.similar("ana", "photography", k=1)[0]["id"] == eid
    store.delete_entry(eid)
    assert eid not in vector_rows(store)
    store.import_user([{"text": "Runs marathons in autumn"}], user="ana")
    ids = {e["id"] for e in store.entries("ana")}
    assert set(vector_rows(store)) >= ids  # every entry of ana has its vector


def test_a_store_from_before_vectors_gets_them_when_a_context_is_built(tmp_path):
    """Schema 5 had no vectors: opening such a file migrates it, and the first context computes them."""
    import sqlite_utils

    from user_store.schema import migrate

    path = tmp_path / "old.db"
    old = sqlite_utils.Database(path)
    migrate(old, target=5)
    uid = old["users"].insert({"name": "old", "created_at": "2026-01-01"}).last_pk
    for text in ("No meat, no fish; tofu and soba are favourites", "Collects Blue Note records"):
        old["entries"].insert({"user_id": uid, "kind": "note", "text": text, "created_at": "2026-01-01",
                               "updated_at": "2026-01-01"})
    old.conn.close()
    s = UserStore(path)
    assert vector_rows(s) == {}
    assert "tofu" in s.build_context("old", "What should I cook tonight?")
    assert len(vector_rows(s)) == 2
    s.close()


def test_retrieval_eval_hybrid_beats_keywords_on_the_shipped_set():
    from costeer.evaluation.retrieval import evaluate_retrieval

    result = evaluate_retrieval()
    recall = result["recall"]
    assert recall["hybrid"]["@3"]["mean"] > recall["keyword"]["@3"]["mean"]
    assert result["rows"] >= 20 and result["context_ms"]["p50"] > 0


def test_a_bad_labelled_set_is_one_line_naming_the_line_and_field(tmp_path):
    from conftest import run_main

    bad = tmp_path / "set.jsonl"
    bad.write_text('{"persona": "kenji_osaka.json", "message": "hi", "relevant": []}\n', encoding="utf-8")
    r = run_main(["-m", "costeer", "retrieval", "--set", str(bad)])
    assert r.returncode == 2 and f"{bad}:1: relevant must be a non-empty list of entry titles" in r.stderr
    bad.write_text("{not json\n", encoding="utf-8")
    r = run_main(["-m", "costeer", "retrieval", "--set", str(bad)])
    assert r.returncode == 2 and f"{bad}:1: not valid JSON" in r.stderr and "Traceback" not in r.stderr
