"""Rating studies through the real app: a study set up from a script, pre-generated with progress,
rated by 12 concurrent scripted raters while another study generates; who may call what, over
gradio_client and over Gradio's raw queue protocol; SIGKILL while voting and generating."""
import json
import os
import signal
import statistics
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
from types import SimpleNamespace

import gradio as gr
import pytest
from gradio_client import Client

from apprunner import free_port, running_app, running_process
from conftest import ROOT
from costeer.bench.machine import cpu_name
from ui.access import Access, owner_gate
from user_store import UserStore

PERSONAS = ["Kenji (Osaka, vegetarian, jazz)", "Jay (teen gamer)", "Prof. Moreau (graph neural networks)"]
PROMPTS = ["Plan my weekend.", "What should I cook tonight?", "Write a short note to a friend.", "Any tips for me?"]
SETTINGS = [{"lam": 1.95, "label": "strong"}, {"lam": 2, "label": "paper"}, {"lam": 4, "label": "mild"}]  # C ≤ 2: fluent
RATERS = 12
P95_TARGET_S = 0.300  # next_pair as a rater's client sees it; measured and reported, not asserted (below)
ARTIFACTS = ROOT / "artifacts"


def token_of(link: dict) -> str:
    return link["link"].split("rater=", 1)[1]


def wait_ready(owner: Client, study: int, timeout: float) -> list[int]:
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = owner.predict(study, api_name="/study_status")
        seen.append(status["answers_done"])
        if status["status"] != "generating":
            return seen
        time.sleep(1)
    raise AssertionError(f"study {study} still generating after {timeout} s: {seen[-5:]}")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    db = tmp_path_factory.mktemp("study") / "costeer.db"
    with running_app(db) as url:
        yield url, db
    log = open(f"{db}.app.log", encoding="utf-8").read()
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.load
@pytest.mark.slow
def test_a_study_from_a_script_twelve_raters_at_once_while_another_generates(app):
    url, db = app
    owner = Client(url, verbose=False)
    users = [owner.predict(p, api_name="/load_persona") for p in PERSONAS]
    assert users == PERSONAS
    study = owner.predict("pilot", users, PROMPTS, SETTINGS, False, RATERS, 0, 6, 8, api_name="/create_study")
    assert study["answers_total"] == 3 * 4 * 4 and study["pairs"] == 3 * 4 * 3 and len(study["links"]) == RATERS
    assert study["settings"] == ["unsteered", "strong", "paper", "mild"]
    t0 = time.time()
    progress = wait_ready(owner, study["study"], 600)
    generate_s = time.time() - t0
    assert progress == sorted(progress) and progress[-1] == 48 and len(set(progress)) > 2  # it moved, in steps

    busy = owner.predict("background", users, PROMPTS, SETTINGS, False, 0, 0, 6, 128, api_name="/create_study")
    latencies, acked, errors = [], {}, []
    lock = threading.Lock()

    def written_for(persona, prompt) -> set[str]:
        """The study's answers to `prompt` for `persona`: what a careful rater recognises as theirs."""
        rows = UserStore(db).db.execute(
            "SELECT a.text FROM study_answers a JOIN study_items i ON i.id = a.item_id "
            "WHERE i.study_id = ? AND i.persona = ? AND i.prompt = ?", [study["study"], persona, prompt]).fetchall()
        return {r[0] for r in rows}

    def rater(link):
        try:
            # ssl_verify=False: plain HTTP on loopback has no TLS; with it on, gradio_client builds a CA
            # store for every call (57 ms of CPU per call here, against 4.7 ms without)
            c = Client(f"{url}study/", verbose=False, ssl_verify=False)
            mine = []
            while True:
                t = time.perf_counter()
                p = c.predict(study["study"], token_of(link), api_name="/next_pair")
                with lock:
                    latencies.append(time.perf_counter() - t)
                if p.get("done"):
                    break
                assert p["A"] and p["B"] and p["card"] and p["prompt"] in PROMPTS
                # a steady rater: an answer written for someone else loses (a silent attention check:
                # it reads like any pair); otherwise the shorter answer wins, whichever side it is on
                fits = written_for(p["persona"], p["prompt"])
                if (p["A"] in fits) != (p["B"] in fits):
                    choice = "A" if p["A"] in fits else "B"
                else:
                    choice = "tie" if len(p["A"]) == len(p["B"]) else "A" if len(p["A"]) < len(p["B"]) else "B"
                vote = c.predict(study["study"], token_of(link), p["pair"], choice, api_name="/vote")
                mine.append(vote["vote"])
            acked[link["name"]] = mine
        except Exception as exc:  # noqa: BLE001 (any error fails the test below)
            errors.append(f"{link['name']}: {type(exc).__name__}: {exc}")

    t0 = time.time()
    threads = [threading.Thread(target=rater, args=(link,)) for link in study["links"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    rate_s = time.time() - t0
    assert not any(t.is_alive() for t in threads), "a rater hung"
    generating = owner.predict(busy["study"], api_name="/study_status")
    assert generating["status"] == "generating"  # the other study was generating the whole time
    assert errors == []
    assert all(len(v) == 36 + 6 for v in acked.values()) and len(acked) == RATERS  # 36 pairs + 6 attention checks
    store = UserStore(db)
    stored = [v["vote"] for v in store.studies.votes(study["study"])]
    assert sorted(stored) == sorted(x for v in acked.values() for x in v)  # every acknowledged vote, once
    p50, p95 = statistics.median(latencies), statistics.quantiles(latencies, n=20)[-1]

    board = owner.predict(study["study"], api_name="/leaderboard")
    for name in study["settings"]:
        s = board["plain"]["scores"][name]
        assert s["low"] <= s["score"] <= s["high"] and s["battles"] > 0
        assert board["style_controlled"]["scores"][name]["score"] is not None
    assert board["votes"] == 36 * RATERS and board["raters"] == RATERS and set(board["by_persona"]) == set(PERSONAS)
    assert board["agreement"]["pairs"] == 36 and board["agreement"]["alpha"] is not None
    assert board["attention"]["checks"] == 6 * RATERS and board["attention"]["rate"] == 1.0  # these raters are steady
    assert board["position_bias"]["decided"] > 0
    every = {r["study"]: r for r in owner.predict(api_name="/results")["studies"]}  # the one Results view
    assert every[study["study"]]["scores"] == board["plain"]["scores"] and every[study["study"]]["votes"] == board["votes"]
    assert busy["study"] in every and "live" in owner.predict(api_name="/results")
    cancelled = owner.predict(busy["study"], api_name="/cancel_study")
    assert cancelled["status"] == "cancelled"

    ARTIFACTS.mkdir(exist_ok=True)
    figures = {"generate_s": round(generate_s, 1), "answers": 48, "raters": RATERS, "votes": len(stored),
               "rate_s": round(rate_s, 1), "next_pair_calls": len(latencies), "next_pair_p50_ms": round(1000 * p50),
               "next_pair_p95_ms": round(1000 * p95), "next_pair_max_ms": round(1000 * max(latencies)),
               "p95_target_ms": 1000 * P95_TARGET_S, "p95_target_met": p95 <= P95_TARGET_S,
               "cpu": cpu_name(), "cores": os.cpu_count()}
    (ARTIFACTS / "study_load.json").write_text(json.dumps(figures, indent=1))
    print("study load:", figures)
    # Latency is a benchmark figure, not a pass/fail: on 2 shared cores the same code measured p95
    # 186, 292 and 315 ms in three runs (the background study and the 12 client threads share the
    # cores with the server). The figure and whether it met the target are in the artifact, and a
    # miss is a visible warning in the run's summary; the README quotes the figures with the command.
    if p95 > P95_TARGET_S:
        warnings.warn(f"study load: next_pair p95 {1000 * p95:.0f} ms over the {1000 * P95_TARGET_S:.0f} ms target "
                      f"on {figures['cpu']} ({figures['cores']} cores); figures in artifacts/study_load.json")


def test_forged_replayed_and_oversized_votes_are_refused(app):
    url, db = app
    owner = Client(url, verbose=False)
    users = [owner.predict(PERSONAS[0], api_name="/load_persona")]
    study = owner.predict("votes", users, PROMPTS[:2], SETTINGS[:1], False, 2, 0, 0, 8, api_name="/create_study")
    wait_ready(owner, study["study"], 300)
    other = owner.predict("other", users, PROMPTS[:1], SETTINGS[:1], False, 1, 0, 0, 8, api_name="/create_study")
    r = Client(f"{url}study/", verbose=False)
    sid, (rita, bo) = study["study"], [token_of(link) for link in study["links"]]
    pair = r.predict(sid, rita, api_name="/next_pair")["pair"]
    for args, message in (((sid, bo, pair, "A"), f"pair #{pair} was not issued to this rater link"),  # forged
                          ((sid, "x" * 22, pair, "A"), "this rater link is not valid for this study"),
                          ((other["study"], rita, pair, "A"), "this rater link is not valid for this study"),
                          ((sid, rita, pair, "x" * 1_000_000), "vote: must be one of A, B, tie, both_bad"),
                          ((sid, "t" * 1_000_000, pair, "A"), "rater: at most 64 characters")):
        with pytest.raises(Exception, match=message):
            r.predict(*args, api_name="/vote")
    assert r.predict(sid, rita, pair, "A", api_name="/vote")["vote"]
    with pytest.raises(Exception, match="already has your vote; votes are final"):
        r.predict(sid, rita, pair, "B", api_name="/vote")  # a replay
    assert [v["choice"] for v in UserStore(db).studies.votes(sid)] == ["A"]


HEALTH = "My HIV diagnosis came in 2021; I take Biktarvy every morning."


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode()


@pytest.mark.slow
def test_what_is_marked_sensitive_never_reaches_a_rater_and_unsharing_reaches_old_studies(app):
    """Issue 23: a sensitive entry ("My HIV diagnosis… Biktarvy") was on the raters' persona card,
    and the copy in study_items outlived deleting the entry."""
    url, db = app
    owner = Client(url, verbose=False)
    store = UserStore(db)
    store.add_user("Ana")
    store.add_entry("Ana", "Architect in Lisbon; loves fado and tiled facades.", "profile", "About me")
    food = store.add_entry("Ana", "Pescatarian; grilled sardines on Fridays.", "preference", "Food")
    health = store.add_entry("Ana", HEALTH, "profile", "Health", pinned=True, sensitive=True)
    with pytest.raises(Exception, match=r"cards\[Ana\]: it holds entry #\d+, which is marked sensitive"):
        owner.predict("leak", ["Ana"], PROMPTS[:1], SETTINGS[:1], False, 1, 0, 0, 8, api_name="/create_study",
                      cards={"Ana": f"Health: {HEALTH}"})
    with pytest.raises(Exception, match=r"cards: 'Bo' is not one of this study's personas"):
        owner.predict("x", ["Ana"], PROMPTS[:1], SETTINGS[:1], False, 1, 0, 0, 8, api_name="/create_study",
                      cards={"Bo": "x"})
    study = owner.predict("privacy", ["Ana"], PROMPTS[:2], SETTINGS[:1], False, 1, 0, 0, 8, api_name="/create_study")
    edited = owner.predict("edited", ["Ana"], PROMPTS[:1], SETTINGS[:1], False, 1, 0, 0, 8, api_name="/create_study",
                           cards={"Ana": "An architect in Lisbon who loves fado."})
    for s in (study, edited):
        wait_ready(owner, s["study"], 300)

    def rater_sees(s) -> str:
        """Every rater-facing answer of a study: its page, its config, each pair and each vote."""
        seen = [_get(f"{url}study/?study={s['study']}&rater={token_of(s['links'][0])}"), _get(f"{url}study/config")]
        r = Client(f"{url}study/", verbose=False)
        while True:
            p = r.predict(s["study"], token_of(s["links"][0]), api_name="/next_pair")
            seen.append(json.dumps(p, ensure_ascii=False))
            if p.get("done") or p.get("waiting"):
                return "\n".join(seen)
            seen.append(json.dumps(r.predict(s["study"], token_of(s["links"][0]), p["pair"], "A", api_name="/vote")))

    first = Client(f"{url}study/", verbose=False).predict(study["study"], token_of(study["links"][0]),
                                                          api_name="/next_pair")
    assert "Architect in Lisbon" in first["card"] and "Pescatarian" in first["card"]  # the default card
    seen = rater_sees(study) + rater_sees(edited)
    for secret in ("HIV", "Biktarvy", "diagnosis"):
        assert secret not in seen, secret
    assert "An architect in Lisbon who loves fado." in seen

    store.update_entry(food, sensitive=True)  # un-shared after the study was made
    store.delete_entry(health)
    cards = [r["card"] for r in store.db.query("SELECT card FROM study_items WHERE persona = 'Ana'")]
    assert cards and not any("Pescatarian" in c or "HIV" in c for c in cards)
    assert all("Architect in Lisbon" in c for c in cards[:2])  # the rest of the card stays
    answers = " ".join(r["text"] for r in store.db.query("SELECT text FROM study_answers"))
    assert HEALTH not in answers and "Biktarvy" not in answers


# -- who may call what ---------------------------------------------------------------------------
def _post(url, body: dict, cookie: str | None = None):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json",
                                                                  **({"Cookie": cookie} if cookie else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def queue_call(base: str, fn_index: int, data: list, cookie: str | None = None):
    """Gradio's own queue protocol from a fresh session, as any HTTP client can speak it:
    returns (HTTP status of the join, the completed message or None)."""
    session = uuid.uuid4().hex
    status, _ = _post(f"{base}gradio_api/queue/join", {"data": data, "fn_index": fn_index, "session_hash": session,
                                                        "event_data": None, "trigger_id": None}, cookie)
    if status != 200:
        return status, None
    req = urllib.request.Request(f"{base}gradio_api/queue/data?session_hash={session}",
                                 headers={"Cookie": cookie} if cookie else {})
    with urllib.request.urlopen(req, timeout=120) as r:
        for line in r:
            if line.startswith(b"data: "):
                msg = json.loads(line[6:])
                if msg.get("msg") == "process_completed":
                    return status, msg
    return status, None


@pytest.mark.slow
def test_with_auth_the_owner_page_answers_no_one_else_and_raters_reach_only_their_study(tmp_path):
    db = tmp_path / "auth.db"
    UserStore(db).import_file(ROOT / "assets" / "personas" / "kenji_osaka.json")
    with running_app(db, "--auth", "owner:a-long-passphrase") as url:
        config = json.loads(urllib.request.urlopen(f"{url}study/config").read())  # no login needed here
        owner = Client(url, auth=("owner", "a-long-passphrase"), verbose=False)
        study = owner.predict("s", [PERSONAS[0]], PROMPTS[:1], SETTINGS[:1], False, 1, 0, 0, 8, api_name="/create_study")
        wait_ready(owner, study["study"], 300)
        token = token_of(study["links"][0])

        # Every event of the owner's page, named or "private", by index from a fresh session: refused.
        status, _ = _post(f"{url}gradio_api/queue/join", {"data": [PERSONAS[0]], "fn_index": 0, "session_hash": "x"})
        assert status == 401
        for endpoint in ("history", "leaderboard", "create_study"):
            status, _ = _post(f"{url}gradio_api/call/{endpoint}", {"data": [PERSONAS[0]]})
            assert status == 401, endpoint

        # The raters' page holds the study and nothing else: no history, chat or user list.
        names = {d.get("api_name") for d in config["dependencies"]} - {None}
        names = {n for n in names if not n.startswith("js_fn")}  # the browser-side lock of the vote buttons
        assert names <= {"next_pair", "vote", "consent", "skip", "open", "next", "ui_next_pair", "ui_agree", "ui_skip",
                         *(f"ui_vote_{v}" for v in ("A", "B", "tie", "both_bad"))}
        ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
        assert not ids & {"history-table", "message", "user", "steered", "export"}
        texts = json.dumps(config)
        assert "Strict vegetarian" not in texts and "History" not in texts
        # Each of its events from a fresh session (no link in the session): nothing of the study comes back.
        answers = [a["text"] for a in UserStore(db).db["study_answers"].rows]
        for dep in config["dependencies"]:
            inputs = [None] * len(dep["inputs"])
            status, msg = queue_call(f"{url}study/", dep["id"], inputs)
            assert status == 200
            out = json.dumps(msg)
            assert not any(a and a in out for a in answers) and "Strict vegetarian" not in out, dep.get("api_name")
        # With its link, a rater gets a pair of their study.
        r = Client(f"{url}study/", verbose=False)
        assert r.predict(study["study"], token, api_name="/next_pair")["card"].startswith("About me")


def test_the_owner_gate_refuses_a_request_that_is_not_the_owners():
    """Gradio's login stands in front of it; this checks the gate itself, in process, with requests
    as Gradio builds them (SimpleNamespace stands in for starlette's request: only its fields are read)."""
    import asyncio

    with gr.Blocks() as demo:
        box = gr.Textbox()
        box.submit(lambda s: s.upper(), box, box, api_name="shout")
    owner_gate(demo, Access("owner"))
    fn = demo.fns[0]
    for user, allowed in (("owner", True), ("rater", False), (None, False)):
        request = SimpleNamespace(username=user, client=SimpleNamespace(host="127.0.0.1"))
        if allowed:
            assert asyncio.run(demo.process_api(fn, ["hi"], request=request))["data"] == ["HI"]
        else:
            with pytest.raises(gr.Error, match="not allowed"):
                asyncio.run(demo.process_api(fn, ["hi"], request=request))
    loopback = Access(None)
    assert loopback.owner_problem(SimpleNamespace(client=SimpleNamespace(host="127.0.0.1"))) is None
    assert "this machine only" in loopback.owner_problem(SimpleNamespace(client=SimpleNamespace(host="10.1.2.3")))
    assert Access(None, open_to_all=True).owner_problem(SimpleNamespace(client=SimpleNamespace(host="10.1.2.3"))) is None


# -- SIGKILL -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_while_voting_and_generating_loses_no_acknowledged_vote_and_generation_resumes(tmp_path):
    db = tmp_path / "kill.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    args = ["app.py", "--port", str(port), "--db", str(db)]
    acked, errors = [], []
    with running_process(args, url, f"{db}.app.log") as proc:
        owner = Client(url, verbose=False)
        users = [owner.predict(PERSONAS[0], api_name="/load_persona")]
        study = owner.predict("k", users, PROMPTS[:3], SETTINGS, False, 4, 0, 0, 8, api_name="/create_study")
        wait_ready(owner, study["study"], 300)
        later = owner.predict("later", users, PROMPTS[:2], SETTINGS, False, 0, 0, 0, 24, api_name="/create_study")
        stop = threading.Event()

        def rater(link):
            c = Client(f"{url}study/", verbose=False)
            try:
                while not stop.is_set():
                    p = c.predict(study["study"], token_of(link), api_name="/next_pair")
                    if p.get("done"):
                        return
                    acked.append(c.predict(study["study"], token_of(link), p["pair"], "A", api_name="/vote")["vote"])
            except Exception as exc:  # noqa: BLE001 (the kill cuts calls off; only acked votes count)
                errors.append(exc)

        threads = [threading.Thread(target=rater, args=(link,), daemon=True) for link in study["links"]]
        for t in threads:
            t.start()
        deadline = time.time() + 120
        while len(acked) < 20 and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        stop.set()
        proc.wait()
        for t in threads:
            t.join(timeout=30)
    assert len(acked) >= 20
    store = UserStore(db)
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert set(acked) <= {v["vote"] for v in store.studies.votes(study["study"])}
    done_at_kill = store.studies.progress(later["study"])["answers_done"]
    assert done_at_kill < 8 and store.studies.study(later["study"])["status"] == "generating"
    store.close()

    with running_process(args, url, f"{db}.restart.log") as proc:  # same port, same file: generation resumes
        owner = Client(url, verbose=False)
        wait_ready(owner, later["study"], 300)
    store = UserStore(db)
    assert store.studies.progress(later["study"])["answers_done"] == 8 and store.studies.pending(later["study"]) == []
    assert "resuming the answers of study" in open(f"{db}.restart.log", encoding="utf-8").read()
