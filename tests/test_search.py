"""Retrieval and the personal context: BM25, FTS syntax safety, Japanese, isolation, budget."""
import pytest

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
    assert lines[0] == "[profile] I love jazz clubs in Osaka"  # pinned first
    assert lines[1] == "[preference] Vegetarian ramen with miso broth"  # then the best match
    assert len(lines) == 2  # entries that match nothing stay out
    small = store.build_context("ana", "ramen", max_tokens=10)
    assert len(small.split()) <= 10
    assert small.startswith("[profile] I love jazz clubs in Osaka")
    assert store.build_context("ana", "ramen", max_tokens=10) == small  # deterministic


def test_profile_entries_always_count(store):
    store.add_user("zed")
    store.add_entry("zed", "Vegan, lives in Lyon", kind="profile")
    store.add_entry("zed", "Collects stamps", kind="note")
    assert store.build_context("zed", "plan my Friday") == "[profile] Vegan, lives in Lyon"


def test_context_with_a_custom_counter(store):
    chars = store.build_context("ana", "ramen", max_tokens=60, count_tokens=len)
    assert len(chars) <= 60 and chars.startswith("[profile]")
