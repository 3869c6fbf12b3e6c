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
    assert {"/generate_pair", "/add_history", "/history", "/ratings_summary", "/create_user", "/load_persona",
            "/create_study", "/study_status", "/cancel_study", "/add_raters", "/leaderboard"} == names
    assert "/rate" not in names  # it took any text as a vote; votes now name a pair the server issued


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
    assert 0 <= summary["ci95"][0] <= summary["steered_win_rate"] <= summary["ci95"][1] <= 1
    assert "T=20, eta=10.0, lam=2.0" in summary["by_params"]


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
