"""The app as a real HTTP server, driven through its named API with gradio_client."""
import pytest
from gradio_client import Client

from apprunner import running_app
from user_store import UserStore


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    db = tmp_path_factory.mktemp("app") / "costeer.db"
    with running_app(db) as url:
        yield url, db


@pytest.fixture(scope="module")
def client(app):
    return Client(app[0], verbose=False)


@pytest.mark.slow
def test_named_endpoints_exist(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/generate_pair", "/chat", "/add_history", "/edit_history", "/delete_history", "/history", "/ratings_summary", "/create_user", "/load_persona",
            "/create_study", "/study_status", "/cancel_study", "/add_raters", "/leaderboard", "/results", "/raters",
            "/revoke_rater"} == names
    assert "/rate" not in names  # it took any text as a vote; votes now name a pair the server issued
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    typed = {p["parameter_name"]: p["python_type"]["type"] for p in api["/chat"]["parameters"]}
    assert typed["T"] == "int" and typed["side_by_side"] == "bool" and typed["message"] == "str"  # not "Any"
    assert api["/generate_pair"]["returns"][0]["python_type"]["type"] == "list[str]"


@pytest.mark.slow
def test_history_generate_summary(client, app):
    store = UserStore(app[1])
    store.add_user("mia")
    eid = client.predict("mia", "I am a strict vegetarian in Osaka who loves jazz. I write short bullet points.",
                         "profile", api_name="/add_history")
    assert isinstance(eid, int) and store.entry(eid)["kind"] == "profile"
    unsteered, steered = client.predict("mia", "Suggest a plan for my Friday evening.", 20, 10, 2,
                                        api_name="/generate_pair")
    assert unsteered.strip() and steered.strip() and unsteered != steered
    # A live A/B vote is cast in the page (its trial stays server-side); here it is written to the
    # same file, as the page's handler writes it, and the summary must count it.
    before = client.predict(api_name="/ratings_summary")
    store.add_vote("rita", "mia", [{"role": "user", "content": "Suggest a plan"}], steered, unsteered, "A", "A",
                   {"T": 20, "eta": 10.0, "lam": 2.0})
    summary = client.predict(api_name="/ratings_summary")
    assert summary["n"] == before["n"] + 1 and summary["counts"]["A"] == before["counts"]["A"] + 1
    assert client.predict(api_name="/results")["live"] == summary  # the one Results view, live votes first
    assert 0 <= summary["ci95"][0] <= summary["steered_win_rate"] <= summary["ci95"][1] <= 1
    assert "T=20, eta=10.0, lam=2.0" in summary["by_params"]


@pytest.mark.slow
def test_chat_returns_the_reply_with_what_the_cloud_received_its_audit_and_latency(client, app):
    kenji = client.predict("Kenji (Osaka, vegetarian, jazz)", api_name="/load_persona")
    entries = {e["id"]: e for e in UserStore(app[1]).entries(kenji)}
    out = client.predict(kenji, "What should I cook tonight?", True, 20, 10, 2, 24, api_name="/chat")
    assert out["steered"].strip() and out["unsteered"].strip() and out["steered"] != out["unsteered"]
    used = out["settings"]["context_entries"]
    assert used and set(used) <= set(entries) and out["settings"]["C"] == pytest.approx(1.783, abs=1e-3)
    food = next(e for e in entries.values() if e["title"] == "Food")
    assert food["id"] in used  # retrieval by meaning reaches the entry that matters
    sent = out["privacy"]["cloud_received"]["steered"]
    assert "What should I cook tonight?" in sent["prompt"] and food["text"][:30] not in sent["prompt"]
    assert sent["reply"].startswith(out["steered"].split(" (cut at")[0][:20])  # the chosen tokens, as sent
    assert out["privacy"]["context_sent"] is False
    assert {"terms", "share", "exposed"} <= set(out["privacy"]["steered_exposure"])
    latency = out["latency"]
    assert latency["steps"] == 24 and {"cloud", "device", "steering"} <= set(latency["per_step_ms"])
    assert latency["device_precision"] and len(latency["projection"]) >= 2
    alone = client.predict(kenji, "What should I cook tonight?", False, 20, 10, 2, 24, api_name="/chat")
    assert alone["unsteered"] is None and alone["steered"] == out["steered"]  # steered alone = side by side
    private = client.predict(kenji, "What should I cook tonight?", False, 20, 10, 2, 24, private=True, api_name="/chat")
    kept = private["privacy"]["kept_back"]
    assert private["settings"]["private"] is True and kept  # Private mode: positions kept on the device
    assert all(k["read"] != k["sent"] for k in kept)
    sent_reply = private["privacy"]["cloud_received"]["steered"]["reply"]
    assert sent_reply.strip() and sent_reply.strip() != private["steered"].split(" (cut at")[0].strip()  # another text
    assert out["privacy"]["kept_back"] is None


@pytest.mark.slow
def test_history_edit_and_delete_act_on_the_users_own_entries_only(client, app):
    store = UserStore(app[1])
    for name in ("ed", "other"):
        store.add_user(name)
    mine = client.predict("ed", "I cycle to work.", "preference", api_name="/add_history")
    theirs = client.predict("other", "I hate mornings.", "note", api_name="/add_history")
    edited = client.predict("ed", mine, "I cycle to work every day.", None, "Commute", True, api_name="/edit_history")
    assert edited == {"id": mine, "kind": "preference", "title": "Commute", "text": "I cycle to work every day.",
                      "pinned": True, "sensitive": False}  # kind left out: kept
    assert client.predict("ed", api_name="/history") == [edited]
    for endpoint, args in (("/edit_history", ("ed", theirs, "mine now")), ("/delete_history", ("ed", theirs))):
        with pytest.raises(Exception) as err:
            client.predict(*args, api_name=endpoint)
        assert "entry_id" in str(err.value) and "not one of ed's entries" in str(err.value)
    assert store.entry(theirs)["text"] == "I hate mornings."
    assert client.predict("ed", mine, api_name="/delete_history") == mine
    assert client.predict("ed", api_name="/history") == [] and store.entry(theirs) is not None


@pytest.mark.slow
def test_a_setting_the_fluency_check_flags_needs_an_explicit_tick(client, app):
    UserStore(app[1]).add_user("mia")
    study = client.predict("salad", ["mia"], ["hi"], [{"lam": 0.5, "label": "salad"}], False, 0, 0, 0, 8,
                           include_flagged=True, api_name="/create_study")
    assert study["settings"] == ["unsteered", "salad"]
    assert client.predict(study["study"], api_name="/study_status")["settings"] == ["unsteered", "salad"]


@pytest.mark.parametrize("args, endpoint, message", [
    (("ghost", "hi", 20, 10, 2), "/generate_pair", "user: unknown user 'ghost'"),
    (("mia", "   ", 20, 10, 2), "/generate_pair", "message: empty; type something first"),
    (("mia", "x" * 5000, 20, 10, 2), "/generate_pair", "message: at most 4000 characters"),
    (("mia", "hi", 0, 10, 2), "/generate_pair", "T: must be an integer in [1, 100], got 0"),
    (("mia", "hi", 20, -1, 2), "/generate_pair", "eta: must be a number in [0.5, 20], got -1"),
    (("mia", "", "note"), "/add_history", "text: empty"),
    (("mia", "ok", "diary"), "/add_history", "kind: must be one of"),
    (("s", ["mia"], ["hi"], [{"lam": 9}]), "/create_study", "settings[0].lam: must be a number in [0.1, 5], got 9"),
    (("s", ["ghost"], ["hi"], [{"lam": 2}]), "/create_study", "personas: unknown user 'ghost'"),
    (("s", ["mia"], ["hi"], [{"lam": 2}, {"lam": 0.5, "label": "salad"}]), "/create_study",
     "settings: salad (C = 969) fails the fluency check"),  # no garbage pairs unless asked for
    ((99,), "/study_status", "unknown study 99"),
])
def test_bad_input_is_a_clear_error_and_the_app_keeps_working(client, app, args, endpoint, message):
    store = UserStore(app[1])
    store.add_user("mia")
    before = (len(store.entries("mia")), len(store.votes()))
    with pytest.raises(Exception) as err:
        client.predict(*args, api_name=endpoint)
    assert message in str(err.value)
    assert (len(store.entries("mia")), len(store.votes())) == before
    assert "counts" in client.predict(api_name="/ratings_summary")


def test_load_failure_is_one_line_and_nonzero(tmp_path):
    from conftest import run_cli

    r = run_cli(["app.py", "--port", "1", "--db", str(tmp_path / "x.db"), "--cloud-model", str(tmp_path / "none")])
    assert r.returncode == 1 and "model load failed" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_a_read_only_database_is_said_at_start_and_refused_in_words(tmp_path):
    """The file is made immutable (chattr +i, as root can on ext4): SQLite then opens it read-only."""
    import shutil
    import subprocess

    db = tmp_path / "ro.db"
    UserStore(db).add_user("mia")
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode:
        pytest.skip("this filesystem cannot make a file immutable (chattr +i)")
    try:
        with running_app(db) as url:
            with pytest.raises(Exception, match="could not save to ro.db: the database file is read-only"):
                Client(url, verbose=False).predict("mia", "a note", "note", api_name="/add_history")
            assert Client(url, verbose=False).predict("mia", api_name="/history") == []  # reading still works
    finally:
        subprocess.run(["chattr", "-i", str(db)])
    log = open(f"{db}.app.log", encoding="utf-8").read()
    assert "app: warning: could not save to ro.db: the database file is read-only" in log
    assert "Traceback" not in log
