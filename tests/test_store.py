"""UserStore API against a real SQLite file: users, entries, validation, migrations."""
import sqlite3

import pytest
import sqlite_utils

from user_store import StoreError, UnknownEntry, UnknownUser, UserStore
from user_store.schema import LATEST, MIGRATIONS, current_version, migrate


@pytest.fixture
def store(tmp_path):
    s = UserStore(tmp_path / "data" / "costeer.db")
    yield s
    s.close()


def test_file_folder_wal_and_foreign_keys(tmp_path):
    s = UserStore(tmp_path / "new" / "dir" / "c.db")
    assert (tmp_path / "new" / "dir" / "c.db").is_file()
    assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert current_version(s.db) == LATEST


def test_default_path_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("COSTEER_DB", str(tmp_path / "env.db"))
    s = UserStore()
    assert s.path == tmp_path / "env.db" and s.path.is_file()


def test_users_and_entries_round_trip(store):
    uid = store.add_user("ana")
    assert store.add_user("ana") == uid  # idempotent
    store.add_user("bo")
    assert store.users() == ["ana", "bo"]
    e1 = store.add_entry("ana", "Likes green tea", kind="preference", title="Tea")
    e2 = store.add_entry("ana", "Lives in Porto", kind="profile", pinned=True)
    got = store.entries("ana")
    assert [e["id"] for e in got] == [e2, e1]  # pinned first
    assert store.entries("ana", kind="preference")[0]["title"] == "Tea"
    store.update_entry(e1, text="Likes oolong tea", pinned=True)
    e = store.entry(e1)
    assert e["text"] == "Likes oolong tea" and e["pinned"] == 1 and e["updated_at"] >= e["created_at"]
    store.delete_entry(e1)
    assert [e["id"] for e in store.entries("ana")] == [e2]
    store.delete_user("ana")
    assert store.users() == ["bo"]
    assert store.db.execute("SELECT count(*) FROM entries").fetchone()[0] == 0
    assert store.db.execute("SELECT count(*) FROM entries_fts").fetchone()[0] == 0


@pytest.mark.parametrize("kwargs, words", [
    ({"text": ""}, "text must be non-empty"),
    ({"text": "   \n\t"}, "text must be non-empty"),
    ({"text": "x" * 100_001}, "at most 100000 bytes"),
    ({"text": "ok", "kind": "diary"}, "kind must be one of profile, preference, writing, chat, note"),
    ({"text": "ok", "title": 5}, "title must be text"),
    ({"text": "ok", "pinned": "yes"}, "pinned must be true or false"),
])
def test_bad_entries_are_refused_and_nothing_written(store, kwargs, words):
    store.add_user("ana")
    with pytest.raises(StoreError, match=words.replace("(", r"\(")):
        store.add_entry("ana", **kwargs)
    assert store.entries("ana") == []


def test_unknown_user_entry_and_field(store):
    with pytest.raises(UnknownUser, match="unknown user 'ghost'"):
        store.add_entry("ghost", "text")
    with pytest.raises(UnknownEntry, match="unknown entry id 999"):
        store.update_entry(999, text="x")
    store.add_user("ana")
    eid = store.add_entry("ana", "text")
    with pytest.raises(StoreError, match="unknown field"):
        store.update_entry(eid, colour="red")
    with pytest.raises(StoreError, match="text must be non-empty"):
        store.update_entry(eid, text=" ")
    assert store.entry(eid)["text"] == "text"
    with pytest.raises(StoreError, match="user name must be non-empty"):
        store.add_user("  ")


def test_migration_from_version_1_keeps_data(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite_utils.Database(sqlite3.connect(str(path)))
    migrate(old, target=1)  # what a version-1 program wrote
    assert current_version(old) == 1 and not old["votes"].exists()
    old["users"].insert({"id": 1, "name": "ana", "created_at": "2026-01-01T00:00:00"})
    old["entries"].insert({"user_id": 1, "kind": "note", "title": None, "text": "Loves jazz in Osaka", "pinned": 0,
                           "created_at": "2026-01-01T00:00:00", "updated_at": "2026-01-01T00:00:00"})
    old.conn.commit()
    old.conn.close()
    s = UserStore(path)
    assert current_version(s.db) == LATEST == len(MIGRATIONS)
    assert s.users() == ["ana"]
    assert s.search("ana", "jazz")[0]["text"] == "Loves jazz in Osaka"
    vid = s.add_vote("r", "ana", [], "a", "b", "A", "tie", {})
    assert s.votes()[0]["id"] == vid


def test_votes_are_checked(store):
    ok = dict(rater="rita", user="ana", conversation=[{"role": "user", "content": "hi"}], answer_a="x",
              answer_b="y", steered_side="B", vote="A", params={"T": 20}, cloud_model="m", local_model="m")
    vid = store.add_vote(**ok)
    v = store.votes()[0]
    assert v["id"] == vid and v["params"] == {"T": 20} and v["conversation"][0]["content"] == "hi"
    for field, bad, msg in (("vote", "C", "vote must be one of A, B, tie, both_bad"),
                            ("steered_side", "left", "steered_side must be 'A' or 'B'"),
                            ("rater", "", "rater must be non-empty")):
        with pytest.raises(StoreError, match=msg):
            store.add_vote(**{**ok, field: bad})
    assert len(store.votes()) == 1
