"""Import and export: our format, JSONL, LongLaMP profiles, merge/replace, all-or-nothing."""
import json
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from user_store import StoreError, UserStore


@pytest.fixture
def store(tmp_path):
    s = UserStore(tmp_path / "c.db")
    yield s
    s.close()


def test_export_import_round_trip(store, tmp_path):
    store.add_user("ana")
    store.add_entry("ana", "Likes jazz 🎷", kind="preference", title="Music", pinned=True)
    store.add_entry("ana", "大阪に住んでいます", kind="profile")
    data = store.export_user("ana")
    other = UserStore(tmp_path / "other.db")
    assert other.import_user(data) == {"user": "ana", "added": 2, "skipped": 0}
    assert other.export_user("ana")["entries"] == data["entries"]
    assert other.import_user(data) == {"user": "ana", "added": 0, "skipped": 2}  # merge skips duplicates
    assert other.import_user({**data, "entries": data["entries"][:1]}, mode="replace")["added"] == 1
    assert len(other.entries("ana")) == 1


def test_jsonl_and_longlamp_imports(store, tmp_path):
    f = tmp_path / "entries.jsonl"
    f.write_text('{"text": "First note"}\n\n{"text": "Second", "kind": "writing", "title": "T"}\n', encoding="utf-8")
    assert store.import_file(f, user="bo")["added"] == 2
    assert [e["kind"] for e in store.entries("bo")] == ["note", "writing"]
    row = {"id": "q1", "input": "Generate an abstract", "output": "ref",
           "profile": [{"title": "GNN paper", "abstract": "We study message passing."},
                       {"title": "Product", "review": "Great headphones."},
                       {"id": "3", "text": "Plain text item"}]}
    assert store.import_user(row, user="carol")["added"] == 3
    assert {e["kind"] for e in store.entries("carol")} == {"writing"}
    assert store.search("carol", "message passing")[0]["title"] == "GNN paper"


@pytest.mark.parametrize("payload, message", [
    ("not json at all", "not valid JSON"),
    ('{"user": "x"}', "expected an object with 'entries'"),
    ('{"user": "x", "entries": "nope"}', "'entries' must be a list"),
    ('{"user": "x", "entries": [{"text": "ok"}, {"title": "no text"}]}', "entry 1 has no text"),
    ('{"user": "x", "entries": [{"text": "ok"}, {"text": "bad kind", "kind": "diary"}]}', "entry 1: kind must be one of"),
    ('{"user": "x", "entries": [{"text": "ok"}, 7]}', "entry 1 must be an object"),
    ('{"entries": [{"text": "ok"}]}', "no user name"),
    ('42', "expected a JSON object or list"),
])
def test_malformed_imports_change_nothing(store, tmp_path, payload, message):
    store.add_user("x")
    store.add_entry("x", "already here")
    f = tmp_path / "bad.json"
    f.write_text(payload, encoding="utf-8")
    with pytest.raises(StoreError, match=message):
        store.import_file(f)
    assert [e["text"] for e in store.entries("x")] == ["already here"]


def test_replace_is_all_or_nothing(store):
    store.add_user("x")
    store.add_entry("x", "keep me")
    with pytest.raises(StoreError):
        store.import_user({"user": "x", "entries": [{"text": "ok"}, {"text": ""}]}, mode="replace")
    assert [e["text"] for e in store.entries("x")] == ["keep me"]


@pytest.mark.parametrize("persona", sorted((ROOT / "assets" / "personas").glob("*.json")))
def test_example_personas_import(store, persona):
    data = json.loads(persona.read_text(encoding="utf-8"))
    result = store.import_file(persona)
    assert 8 <= result["added"] <= 15 and result["user"] == data["user"]
    assert store.build_context(result["user"], "plan my evening")


def test_cli_script_workflow(tmp_path):
    db = str(tmp_path / "cli.db")
    persona = str(ROOT / "assets" / "personas" / "kenji_osaka.json")
    assert run_cli(["-m", "user_store", "--db", db, "add-user", "zoe"]).returncode == 0
    r = run_cli(["-m", "user_store", "--db", db, "add", "zoe", "Loves climbing in Fontainebleau", "--kind", "preference"])
    assert r.returncode == 0 and r.stdout.strip().isdigit()
    r = run_cli(["-m", "user_store", "--db", db, "search", "zoe", "climbing"])
    assert json.loads(r.stdout.splitlines()[0])["text"] == "Loves climbing in Fontainebleau"
    r = run_cli(["-m", "user_store", "--db", db, "import", persona])
    assert json.loads(r.stdout)["added"] == 10
    name = json.loads(Path(persona).read_text())["user"]
    r = run_cli(["-m", "user_store", "--db", db, "context", name, "jazz tonight"])
    assert r.stdout.startswith("- ")
    r = run_cli(["-m", "user_store", "--db", db, "export", "zoe"])
    assert json.loads(r.stdout)["entries"][0]["kind"] == "preference"
    r = run_cli(["-m", "user_store", "--db", db, "add", "nobody", "text"])
    assert r.returncode == 2 and "unknown user 'nobody'" in r.stderr and "Traceback" not in r.stderr


def test_a_duplicate_marked_sensitive_merges_and_jsonl_errors_name_their_line(store, tmp_path):
    """Issue 23: a file whose second copy of an entry is marked sensitive failed with NotFoundError
    (two tracebacks); a JSONL error always said "line 1"."""
    f = tmp_path / "dup.json"
    f.write_text(json.dumps({"user": "ana", "entries": [{"text": "HIV clinic on Tuesdays"},
                                                        {"text": "HIV clinic on Tuesdays", "sensitive": True},
                                                        {"text": "Likes fado"}]}), encoding="utf-8")
    assert store.import_file(f) == {"user": "ana", "added": 2, "skipped": 1}
    assert [(e["text"], e["sensitive"]) for e in store.entries("ana")] == [("HIV clinic on Tuesdays", 1), ("Likes fado", 0)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "one"}\n\n{"text": "two"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(StoreError, match="at line 4"):
        store.import_file(bad, user="ana")
    assert len(store.entries("ana")) == 2


def test_a_stale_edit_is_refused_and_the_newer_kept(store):
    store.add_user("ana")
    e = store.add_entry("ana", "Likes fado")
    v = store.entry(e)["version"]
    store.update_entry(e, version=v, text="Likes fado and jazz")  # tab B
    with pytest.raises(StoreError, match="changed in another tab or window"):
        store.update_entry(e, version=v, text="Likes fado (stale tab A)")
    assert store.entry(e)["text"] == "Likes fado and jazz" and store.entry(e)["version"] == v + 1
