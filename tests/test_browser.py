"""The app in headless Chromium (Debian's package) as a presenter uses it: one app process and one
browser for the module, a fresh browser context (its own session) per test."""
import json
import re
import shutil
import time
from pathlib import Path

import pytest

from apprunner import free_port, running_app
from conftest import ROOT
from user_store import UserStore

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts"
KENJI = "Kenji (Osaka, vegetarian, jazz)"
JAY = "Jay (teen gamer)"
RATERS_HOST = "127.0.0.2"
LONG = 180_000  # ms: a 128-token answer on 2 busy cores


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    db = tmp_path_factory.mktemp("browser") / "costeer.db"
    store = UserStore(db)
    for persona in ("kenji_osaka", "jay_gamer"):
        store.import_file(ROOT / "assets" / "personas" / f"{persona}.json")
    # the raters' page alone on another address (a loopback alias here; 0.0.0.0 on a real network)
    raters_port = free_port()
    with running_app(db, "--raters-host", RATERS_HOST, "--raters-port", str(raters_port)) as url:
        yield url, db, f"http://{RATERS_HOST}:{raters_port}"
    log = Path(f"{db}.app.log").read_text(encoding="utf-8")
    assert "Traceback" not in log, log[-3000:]  # every session of the module: refusals are one line each


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is installed by scripts/install.sh --test"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def new_page(browser, app):
    from playwright.sync_api import expect

    contexts = []

    def open_page():
        ctx = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        contexts.append(ctx)
        page = ctx.new_page()
        page.goto(app[0])
        page.locator("#send").wait_for()
        expect(page.locator("#user input")).not_to_have_value("")  # the page's load event has picked a user
        return page

    yield open_page
    for ctx in contexts:
        ctx.close()


def pick_user(page, name):
    from playwright.sync_api import expect

    page.locator("#user input").click()
    page.get_by_role("option", name=name, exact=True).click()
    expect(page.locator("#user input")).to_have_value(name)
    time.sleep(0.5)  # the switch's reset and history reload run as their own events


def send(page, message, max_new=None):
    from playwright.sync_api import expect

    if max_new is not None:
        page.get_by_text("Advanced").click()
        box = page.locator("#max_new_tokens input[type=number]")
        slider = page.locator("#max_new_tokens input[type=range]")
        # The value must reach the slider before Send reads it. Twice (in CI, and once here) a typed
        # value was overwritten by the default 128 as the accordion's content came up, so type
        # again until the slider shows it.
        for attempt in range(5):
            box.fill(str(max_new))
            box.blur()
            try:
                expect(slider).to_have_value(str(max_new), timeout=2_000)
                break
            except AssertionError:
                if attempt == 4:
                    raise
        page.get_by_text("Advanced").click()
    page.locator("#message textarea").fill(message)
    page.locator("#send").click()


def cell(page, row, col):
    """A cell of the History table (Gradio's virtual table: cells carry their row and column)."""
    return page.locator(f"#history-table [data-testid='cell-{row}-{col}']")


def toasts(page) -> str:
    return "\n".join(page.locator("[data-testid='toast-body']").all_inner_texts())


def wait_done(page, timeout=LONG):
    from playwright.sync_api import expect

    expect(page.locator("#latency")).to_contain_text("first token", timeout=timeout)


def test_persona_chat_side_by_side_vote_results_and_exports(new_page, app):
    from playwright.sync_api import expect

    page = new_page()
    # the first screen (1280x800) says where to start, offers the docs' persona and shows the example prompts (#27)
    expect(page.locator("#start-here")).to_contain_text("Start here")
    expect(page.locator("#user input")).to_have_value(KENJI)  # a persona loaded: the docs' demo persona
    expect(page.locator("#examples")).to_contain_text("Recommend three albums for a rainy Sunday.")  # its prompts
    expect(page.locator("#persona input")).to_have_value(KENJI)
    box = page.locator("#examples").bounding_box()
    assert box and box["y"] + box["height"] <= 800, box
    page.locator("#persona input").click()
    page.get_by_role("option", name=KENJI).click()
    page.locator("#load-persona").click()
    expect(page.locator("#user input")).to_have_value(KENJI, timeout=30_000)
    page.evaluate("window.scrollTo(0, 0)")
    for slider in ("#T", "#eta", "#lam"):  # the sliders sit beside the chat, above the fold at 1280×800
        box = page.locator(slider).bounding_box()
        assert box["y"] + box["height"] <= 800 and box["x"] > page.locator("#steered").bounding_box()["x"], slider
    assert page.locator("#steered").bounding_box()["height"] >= 280  # 290: room for the prompts and Send above the fold
    page.locator("#examples").get_by_text("What should I cook tonight?").click()  # an example prompt
    expect(page.locator("#message textarea")).to_have_value("What should I cook tonight?")
    send(page, "What does <script>alert(1)</script> mean? Suggest a plan for my Friday evening.", max_new=32)
    expect(page.locator("#steered")).to_contain_text("<script>alert(1)</script>", timeout=10_000)  # echoed, as text
    expect(page.locator("#send")).to_be_disabled()
    wait_done(page)
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#status")).to_contain_text("done")
    expect(page.locator("#steered")).to_contain_text("T=20 · η=10 · λ=2 · C=1.783")  # the settings of the answer
    expect(page.locator("#privacy")).to_contain_text("Strict vegetarian")  # the context, on the device side
    texts = {c: page.locator(f"#{c}").inner_text() for c in ("steered", "unsteered")}
    assert all(t.split("Friday evening.", 1)[1].strip() for t in texts.values())
    assert texts["steered"] != texts["unsteered"]
    expect(page.locator("#tokens .tok").first).to_be_visible()

    page.get_by_role("tab", name="Rate (blind A/B)").click()
    expect(page.locator("#ab-card")).to_contain_text("Strict vegetarian")  # the persona the vote judges for
    expect(page.locator("#vote-A")).to_be_disabled()  # nothing to vote on yet
    page.locator("#ab-message textarea").fill("What should I cook tonight?")
    page.locator("#ab-generate").click()
    expect(page.locator("#reveal")).to_contain_text("Read both answers", timeout=LONG)
    expect(page.locator("#vote-A")).to_be_enabled()
    page.locator("#vote-A").click()  # no rater name yet: refused, and the pair and its buttons stay (#27)
    expect(page.get_by_test_id("toast-body").filter(has_text="rater")).to_be_visible(timeout=30_000)
    for v in ("A", "B"):
        expect(page.locator(f"#vote-{v}")).to_be_enabled()
    expect(page.locator("#reveal")).to_contain_text("Read both answers")
    page.locator("#rater textarea").fill("rita")
    page.locator("#vote-A").click()
    expect(page.locator("#reveal")).to_contain_text("was steered (CoSteer)", timeout=30_000)
    expect(page.locator("#vote-B")).to_be_disabled()  # one vote per pair
    expect(page.locator("#answer-a, #answer-b").get_by_text("steered (CoSteer)")).to_have_count(1)  # relabelled
    page.get_by_role("tab", name="Results").click()
    expect(page.locator("#results-table")).to_contain_text("all settings", timeout=30_000)  # no Refresh needed
    with page.expect_download(timeout=30_000) as votes:
        page.locator("#export-votes").click()  # one click
    assert "rita" in Path(votes.value.path()).read_text(encoding="utf-8")
    page.get_by_role("tab", name="History").click()
    with page.expect_download(timeout=30_000) as history:
        page.locator("#export").click()
    assert json.loads(Path(history.value.path()).read_text(encoding="utf-8"))["user"] == KENJI
    v = UserStore(app[1]).votes()[-1]
    assert v["rater"] == "rita" and v["user"] == KENJI and v["vote"] == "A" and v["params"]["T"] == 20


def test_send_pressed_while_the_last_turn_ends_is_held_not_lost(new_page):
    """The reply is shown and Send is enabled while the turn's tail (the attacker's guess) still
    runs; a Send pressed then runs when the tail ends ("once", Gradio's default, dropped it).
    Early in the module, while the store holds two users, so the guesses are short."""
    from playwright.sync_api import expect

    page = new_page()
    pick_user(page, KENJI)
    send(page, "What should I cook tonight?", max_new=8)
    wait_done(page)
    cloud, status = page.locator("#privacy .cloud"), page.locator("#status")
    during_tail = "A curious cloud" not in cloud.inner_text() and "a message sent now waits" in status.inner_text()
    send(page, "And for dessert?")
    expect(page.locator("#steered")).to_contain_text("And for dessert?", timeout=LONG)
    expect(page.locator("#send")).to_be_enabled(timeout=LONG)
    # the guess, or "no evidence" when the steered reply is the cloud's own answer
    expect(cloud).to_contain_text("A curious cloud", timeout=60_000)
    expect(status).not_to_contain_text("guessing")  # the note goes with the guess
    assert during_tail  # the second Send was pressed while the first turn was still pending, and it said so


def test_switching_user_mid_stream_keeps_nothing_of_the_old_reply(new_page):
    from playwright.sync_api import expect

    page = new_page()
    pick_user(page, KENJI)
    send(page, "Suggest a plan for my Friday evening.")
    expect(page.locator("#tokens .tok").first).to_be_visible(timeout=LONG)  # streaming
    pick_user(page, JAY)
    time.sleep(3)  # long enough for the old reply to have shown more tokens, had it kept running
    for pane in ("steered", "unsteered", "tokens", "privacy"):
        assert "Friday" not in page.locator(f"#{pane}").inner_text(), pane
    expect(page.locator("#send")).to_be_enabled()
    send(page, "What should I do this weekend?", max_new=16)
    wait_done(page)
    cloud_side = page.locator("#privacy .cloud").inner_text()
    assert "weekend" in cloud_side and "Friday" not in cloud_side  # the next cloud prompt: Jay's turn only
    assert "Strict vegetarian" not in page.locator("#privacy").inner_text()  # nor Kenji's private context


def _answer_view(page) -> dict:
    """Where the page and the steered chat box stand: the page's scroll, the box's top on screen,
    and the top of the newest message in it relative to the box's visible area (0 = at its top)."""
    return page.evaluate("""() => {
        const log = document.querySelector('#steered .bubble-wrap');
        const users = log.querySelectorAll('[data-testid=user]'), bots = log.querySelectorAll('[data-testid=bot]');
        const top = log.getBoundingClientRect().top, bottom = log.getBoundingClientRect().bottom;
        const at = el => el ? Math.round(el.getBoundingClientRect().top - top) : null;
        return {page: window.scrollY, box: Math.round(top), height: Math.round(bottom - top),
                question: at(users[users.length - 1]), answer: at(bots[bots.length - 1]),
                overflow: log.scrollHeight - log.clientHeight};
    }""")


def test_the_page_and_the_answers_hold_still_while_they_stream(new_page):
    """#27: the tops of the answers stayed hidden while they streamed. At 1280x800 the message box
    and Send are on the first screen, the page does not scroll, and each chat box keeps the top of
    the newest question and answer in view instead of following the stream to its end."""
    from playwright.sync_api import expect

    page = new_page()
    for turn, prompt in enumerate(("Suggest a plan for my Friday evening.", "Recommend three albums for a rainy Sunday.")):
        page.locator("#examples").get_by_text(prompt).click()
        if turn == 0:
            send_box = page.locator("#send").bounding_box()
            assert send_box["y"] + send_box["height"] <= 800, send_box  # on the first screen: no scrolling to Send
        page.locator("#send").click()
        expect(page.locator("#stop")).to_be_visible(timeout=10_000)
        scrolled = page.evaluate("window.scrollY")  # 0 on the first turn; the status line can push Send down later
        views = []
        while page.locator("#stop").is_visible():
            views.append(_answer_view(page))
            time.sleep(0.5)
        views.append(_answer_view(page))
        assert views[-1]["overflow"] > 0, views[-1]  # the conversation outgrew its box: there was room to jump
        for v in views:
            assert v["page"] == scrolled and v["box"] >= 0, (turn, v)  # the page stood still, the box on screen
            if v["question"] is not None:  # the question and its answer's first line in view
                assert 0 <= v["question"] < v["answer"] < v["height"] - 20, (turn, v)
        assert views[-1]["question"] <= 40, views[-1]  # once the answer fills the box, its question sits at the top
        wait_done(page)


def test_stop_ends_the_reply_and_send_works_again(new_page):
    from playwright.sync_api import expect

    page = new_page()
    pick_user(page, KENJI)
    send(page, "Suggest a plan for my Friday evening.")
    expect(page.locator("#stop")).to_be_visible(timeout=10_000)
    expect(page.locator("#tokens .tok").first).to_be_visible(timeout=LONG)
    page.locator("#stop").click()
    expect(page.locator("#status")).to_contain_text("stopped")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#message textarea")).to_have_value("Suggest a plan for my Friday evening.")  # kept
    time.sleep(2)
    assert "Friday" not in page.locator("#steered").inner_text()
    send(page, "What should I cook tonight?", max_new=16)
    wait_done(page)
    assert "cook tonight" in page.locator("#steered").inner_text()
    assert "Friday" not in page.locator("#privacy .cloud").inner_text()


def test_reload_shows_users_created_elsewhere(new_page, app):
    page = new_page()
    page.locator("#user input").click()
    page.get_by_role("option", name=KENJI).wait_for()  # the page's own load has listed the users
    UserStore(app[1]).add_user("Zoe (made with the CLI)")
    assert "Zoe (made with the CLI)" not in page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    page.reload()
    pick_user(page, "Zoe (made with the CLI)")
    assert page.locator("#user input").input_value() == "Zoe (made with the CLI)"


def test_import_goes_into_the_files_user_and_html_in_it_is_text(new_page, app, tmp_path):
    from playwright.sync_api import expect

    page = new_page()
    pick_user(page, KENJI)
    page.get_by_role("tab", name="History").click()
    ana = tmp_path / "ana.json"
    ana.write_text(json.dumps({"user": "Ana Porto", "entries": [{"text": "Lives in Lisbon, cycles to work"}]}),
                   encoding="utf-8")
    page.locator("#upload input[type=file]").set_input_files(str(ana))
    page.locator("#import").click()
    expect(page.locator("#user input")).to_have_value("Ana Porto", timeout=30_000)
    assert "Imported into Ana Porto" in toasts(page)
    assert all("Lisbon" not in e["text"] for e in UserStore(app[1]).entries(KENJI))

    link = "<a href='http://example.invalid/'>Session expired - click to log in</a>"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({link: 1}), encoding="utf-8")
    page.locator("#upload input[type=file]").set_input_files(str(bad))
    page.locator("#import").click()
    expect(page.locator("[data-testid='toast-body']").last).to_contain_text(link, timeout=30_000)  # shown as text
    assert page.locator("[data-testid='toast-body'] a").count() == 0  # not a link


def two_history_tabs(new_page, row: int):
    """Two tabs on Jay's History, each showing the table down to `row`."""
    from playwright.sync_api import expect

    tabs = new_page(), new_page()
    for tab in tabs:
        pick_user(tab, JAY)
        tab.get_by_role("tab", name="History").click()
        expect(cell(tab, row, 3)).to_be_visible(timeout=30_000)
    return tabs


def test_two_tabs_delete_then_edit_acts_on_the_right_id(new_page, app):
    from playwright.sync_api import expect

    store = UserStore(app[1])
    tab_a, tab_b = two_history_tabs(new_page, 3)
    rows = [e["id"] for e in store.entries(JAY)]
    cell(tab_b, 0, 3).click()
    expect(tab_b.locator("#entry-id textarea")).to_have_value(str(rows[0]))
    tab_b.locator("#delete-entry").click()
    expect(tab_b.locator("#confirm-text")).to_contain_text(f"#{rows[0]}")
    assert rows[0] in [e["id"] for e in store.entries(JAY)]  # asking deleted nothing
    tab_b.locator("#confirm-delete").click()
    expect(tab_b.locator("#confirm-row")).to_be_hidden(timeout=30_000)
    assert rows[0] not in [e["id"] for e in store.entries(JAY)]

    cell(tab_a, 2, 3).click()  # tab A's stale table: row 2 shows id rows[2]
    expect(tab_a.locator("#entry-id textarea")).to_have_value(str(rows[2]))
    expected = store.entry(rows[2])["text"]
    expect(tab_a.locator("#entry-text textarea")).to_have_value(expected)
    tab_a.locator("#entry-text textarea").fill(expected + " (edited in tab A)")
    tab_a.locator("#save-entry").click()
    expect(tab_a.locator("#history-table")).to_contain_text("(edited in tab A)", timeout=30_000)
    assert store.entry(rows[2])["text"].endswith("(edited in tab A)")
    assert not store.entry(rows[3])["text"].endswith("(edited in tab A)")


def test_two_tabs_editing_one_entry_the_stale_save_is_refused_not_lost(new_page, app):
    """Issue 23: tab B saved an edit, tab A then saved its stale form and B's edit was gone."""
    from playwright.sync_api import expect

    store = UserStore(app[1])
    tab_a, tab_b = two_history_tabs(new_page, 1)
    for tab in (tab_a, tab_b):
        cell(tab, 1, 3).click()
    entry = store.entries(JAY)[1]
    for tab in (tab_a, tab_b):
        expect(tab.locator("#entry-text textarea")).to_have_value(entry["text"])
    tab_b.locator("#entry-text textarea").fill(entry["text"] + " (B)")
    tab_b.locator("#save-entry").click()
    expect(tab_b.locator("#history-table")).to_contain_text("(B)", timeout=30_000)
    tab_a.locator("#entry-text textarea").fill(entry["text"] + " (A, stale)")
    tab_a.locator("#save-entry").click()
    expect(tab_a.locator("[data-testid='toast-body']")).to_contain_text("changed in another tab", timeout=30_000)
    assert store.entry(entry["id"])["text"] == entry["text"] + " (B)"  # B's edit kept
    expect(tab_a.locator("#entry-text textarea")).to_have_value(entry["text"] + " (A, stale)")  # A's typing kept
    cell(tab_a, 1, 3).click()  # reload the row, edit again: saved
    expect(tab_a.locator("#entry-text textarea")).to_have_value(entry["text"] + " (B)", timeout=30_000)
    tab_a.locator("#entry-text textarea").fill(entry["text"] + " (B) (A)")
    tab_a.locator("#save-entry").click()
    expect(tab_a.locator("#history-table")).to_contain_text("(B) (A)", timeout=30_000)
    assert store.entry(entry["id"])["text"] == entry["text"] + " (B) (A)"


def test_a_refusal_is_a_message_and_leaves_no_error_badge(new_page, app):
    from playwright.sync_api import expect

    page = new_page()
    pick_user(page, KENJI)
    page.locator("#send").click()  # an empty message
    expect(page.locator("[data-testid='toast-body']")).to_contain_text("message: empty", timeout=10_000)
    page.locator("#lam input[type=number]").fill("9")
    page.locator("#lam input[type=number]").press("Enter")
    expect(page.locator("[data-testid='toast-body']")).to_contain_text("lam: must be a number in [0.1, 5], got 9")
    page.locator("[data-testid='toast-close']").first.click()
    time.sleep(1)
    assert page.get_by_text("Error", exact=True).count() == 0  # no sticky badge on any component
    expect(page.locator("#message textarea")).to_be_visible()
    log = Path(f"{app[1]}.app.log").read_text()
    assert "refused chat: message: empty" in log and "Traceback" not in log


def _ready_study(url, name, prompts, raters, personas=(KENJI,), pairs_per_rater=0, attention_every=0,
                 max_new_tokens=8, **options):
    from gradio_client import Client

    owner = Client(url, verbose=False)
    study = owner.predict(name, list(personas), prompts, [{"lam": 2, "label": "paper"}], False, raters,
                          pairs_per_rater, attention_every, max_new_tokens, api_name="/create_study", **options)
    deadline = time.time() + 300
    while owner.predict(study["study"], api_name="/study_status")["status"] == "generating":
        assert time.time() < deadline, "the study's answers were not generated in time"
        time.sleep(1)
    return study


def test_the_raters_server_serves_the_raters_page_and_nothing_else(app):
    import urllib.error
    import urllib.request

    from gradio_client import Client

    with urllib.request.urlopen(app[2] + "/study/", timeout=30) as r:
        assert r.status == 200
    for path in ("/", "/gradio_api/info", "/gradio_api/call/history", "/config"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(app[2] + path, timeout=30)
        assert err.value.code in (404, 405), path  # no owner page, no owner API
    owner_port = app[0].rstrip("/").rsplit(":", 1)[1]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://{RATERS_HOST}:{owner_port}/", timeout=10)  # the owner's page stays on loopback
    names = set(Client(app[2] + "/study/", verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert names == {"/next_pair", "/vote", "/consent", "/skip"}


def blind(page):
    """A rater's page before their last vote: no setting name, no study name (read from the DOM)."""
    text = page.evaluate("document.body.innerText")
    for name in ("paper", "unsteered", "phone study", "λ"):
        assert name not in text, name


def _open_check(store, rater_name, study_id) -> str | None:
    """The side that fits the card when the rater's open pair is a silent attention check (read from
    the store, as a careful rater reads it off the card), else None."""
    rows = store.db.execute(
        "SELECT x.decoy_item, x.decoy_left FROM study_issues x JOIN study_raters r ON r.id = x.rater_id "
        "LEFT JOIN study_votes v ON v.issue_id = x.id WHERE r.study_id = ? AND r.name = ? AND v.id IS NULL "
        "ORDER BY x.id DESC LIMIT 1", [study_id, rater_name]).fetchall()
    return None if not rows or rows[0][0] is None else ("A" if rows[0][1] else "B")


def _vote_on_phone(page, store, study, rater, choice, progress):
    from playwright.sync_api import expect

    expect(page.locator("#study-progress")).to_contain_text(progress, timeout=30_000)
    blind(page)
    fits = _open_check(store, rater, study["study"])
    page.locator(f"#study-vote-{fits or choice}").tap()  # a silent check: the answer that fits the card
    expect(page.locator("#study-reveal")).to_contain_text("Saved", timeout=30_000)
    blind(page)
    page.locator("#study-next").tap()
    return fits


def test_two_raters_on_phones_through_the_raters_server_consent_comment_skip_silent_check_and_code(browser, app):
    from playwright.sync_api import expect

    prompts = ["Plan my Friday evening", "What should I cook tonight?"]
    study = _ready_study(app[0], "phone study", prompts, 2, personas=[KENJI, JAY], pairs_per_rater=2,
                         attention_every=2, max_new_tokens=16, consent="I agree that my votes are stored.",
                         completion_code="PHONE-123")
    store = UserStore(app[1])
    checks = []
    for n, link in enumerate(study["links"]):
        ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        try:
            page = ctx.new_page()
            # the raters' own server, not the owner's; a panel's ids ride on the link, as Prolific adds them
            page.goto(app[2] + link["link"] + f"&PROLIFIC_PID=p-{n}&STUDY_ID=s-7&SESSION_ID=x-{n}")
            expect(page.locator("#study-header")).to_contain_text("Rating as", timeout=30_000)
            expect(page.locator("#study-consent")).to_contain_text("I agree that my votes are stored.")
            expect(page.locator("#study-a")).to_be_hidden()  # nothing of the study before consent
            blind(page)
            page.locator("#study-agree").tap()
            expect(page.locator("#study-progress")).to_contain_text("Pair 1 of 3", timeout=30_000)
            expect(page.locator("#persona-card")).not_to_be_empty()  # what the rater judges against
            if n == 0:
                _first_pair_on_a_phone(page, store, study)
            else:
                checks.append(_vote_on_phone(page, store, study, link["name"], "B", "Pair 1 of 3"))
                checks.append(_vote_on_phone(page, store, study, link["name"], "A", "Pair 2 of 3"))
                checks.append(_vote_on_phone(page, store, study, link["name"], "A", "Pair 3 of 3"))
            expect(page.locator("#study-reveal")).to_contain_text("All done", timeout=30_000)
            expect(page.locator("#study-a")).to_be_hidden()
            reveal = page.locator("#study-reveal").inner_text()
            assert "paper" in reveal and "unsteered" in reveal  # revealed after the last vote, as the study chose
            assert "Your completion code: PHONE-123" in reveal
            if n == 0:
                page.screenshot(path=str(ARTIFACTS / "study_phone.png"), full_page=True)
        finally:
            ctx.close()
    votes = store.studies.votes(study["study"])
    silent = [v for v in votes if v["attention_of"] is not None]
    assert len(silent) == 2 and all(v["decoy_item"] is not None for v in silent)  # one silent check each
    assert ("A", "B repeats itself.") in [(v["choice"], v["comment"]) for v in votes]
    from gradio_client import Client

    lb = Client(app[0], verbose=False).predict(study["study"], api_name="/leaderboard")
    assert lb["attention"]["checks"] == 2 and lb["attention"]["rate"] == 1.0  # both read the card
    raters = list(store.db["study_raters"].rows_where("study_id = ?", [study["study"]], order_by="id"))
    assert all(r["consented_at"] for r in raters) and json.loads(raters[0]["external"]) == {
        "PROLIFIC_PID": "p-0", "STUDY_ID": "s-7", "SESSION_ID": "x-0"}


def _first_pair_on_a_phone(page, store, study):
    """Rater 1: the phone's layout, a comment, a reload, a skip, then the rest."""
    from playwright.sync_api import expect

    for v in ("A", "B", "tie", "both_bad"):
        expect(page.locator(f"#study-vote-{v}")).to_be_enabled()  # both answers are there
    assert page.locator("#message").count() == 0 and page.get_by_role("tab", name="History").count() == 0
    body = page.locator("body").inner_text()
    assert "Blue Note" not in body and "Kyoto day trip" not in body  # history beyond the card stays away
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    box = page.locator("#study-vote-A").bounding_box()
    assert box["width"] >= 120 and box["height"] >= 36  # a thumb-sized target
    first = (page.locator("#study-prompt").inner_text(), page.locator("#study-a").inner_text())
    page.locator("#study-comment textarea").fill("B repeats itself.")
    page.locator("#study-vote-A").tap()
    expect(page.locator("#study-reveal")).to_contain_text("Saved: A is better with your comment", timeout=30_000)
    blind(page)
    for v in ("A", "B", "tie", "both_bad"):
        expect(page.locator(f"#study-vote-{v}")).to_be_disabled()  # one vote per pair
    page.reload()  # a reload after the vote does not offer the same pair again
    expect(page.locator("#study-progress")).to_contain_text("Pair 2 of 3", timeout=30_000)
    blind(page)
    top = page.evaluate("document.querySelector('#study-a').getBoundingClientRect().top + window.scrollY")
    assert top < 844, top  # answer A starts on the first screen
    assert (page.locator("#study-prompt").inner_text(), page.locator("#study-a").inner_text()) != first
    expect(page.locator("#study-comment textarea")).to_have_value("")  # a fresh comment box per pair
    page.locator("#study-skip").tap()  # not a vote: another pair takes its place
    name = "rater 1"
    _vote_on_phone(page, store, study, name, "tie", "Pair 3 of 4")
    _vote_on_phone(page, store, study, name, "A", "Pair 4 of 4")  # the silent check


def test_a_broken_rater_link_says_so(browser, app):
    from playwright.sync_api import expect

    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page = ctx.new_page()
        page.goto(app[2] + "/study/?study=1&rater=not-a-real-link")
        expect(page.locator("#study-header")).to_contain_text("This study link does not work", timeout=30_000)
        expect(page.locator("#study-vote-A")).to_be_hidden()  # no pair, no buttons
    finally:
        ctx.close()


def test_the_studies_tab_creates_a_study_hands_out_links_and_shows_results(new_page, app):
    from playwright.sync_api import expect

    page = new_page()
    page.get_by_role("tab", name="Studies").click()
    page.locator("#study-name textarea").fill("tab study")
    page.locator("#study-personas input").click()
    page.get_by_role("option", name=KENJI, exact=True).click()
    page.locator("#study-prompts textarea").fill("Plan my Friday evening")
    page.locator("#study-settings textarea").fill("lam=0.5 label=salad")  # marked in the form
    expect(page.locator("#study-fluency")).to_contain_text("salad: C = 969 ⚠️ fails the fluency check")
    page.locator("#study-settings textarea").fill("lam=2 label=paper")
    expect(page.locator("#study-fluency")).to_contain_text("paper: C = 1.78 ✓")
    page.locator("#study-raters input").fill("2")
    box = page.locator("#study-max-new input[type=number]")
    box.fill("8")
    box.press("Enter")
    page.locator("#study-create").click()
    expect(page.locator("#study-links")).to_contain_text("/study/?study=", timeout=30_000)
    assert page.locator("#study-links").inner_text().count("/study/?study=") == 2
    expect(page.locator("#study-progress-bar")).to_contain_text("tab study: ready", timeout=120_000)  # the timer refreshes it
    link = page.locator("#study-links code").first.inner_text()
    assert link.startswith(app[2] + "/study/?study=")  # links name the raters' own server
    expect(page.locator("#study-links")).to_contain_text("a server with the raters' page only")
    study = int(link.split("study=")[1].split("&")[0])
    from gradio_client import Client

    r = Client(app[0] + "study/", verbose=False)
    token = link.split("rater=")[1]
    pair = r.predict(study, token, api_name="/next_pair")
    assert "pair" in pair, (link, pair)
    r.predict(study, token, pair["pair"], "B", api_name="/vote")
    expect(page.locator("#study-summary")).to_contain_text("1 votes", timeout=30_000)  # refreshed as votes arrive
    expect(page.locator("#study-leaderboard")).to_contain_text("paper")
    with page.expect_download(timeout=30_000) as battles:
        page.locator("#study-export-jsonl").click()
    rows = [json.loads(line) for line in Path(battles.value.path()).read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1 and rows[0]["winner"] == "model_b" and {rows[0]["model_a"], rows[0]["model_b"]} == {
        "paper", "unsteered"}
    second = page.locator("#study-links code").nth(1).inner_text()
    page.reload()  # the organizer's desk survives a reload: links, progress, time per vote
    page.locator("#send").wait_for()
    page.get_by_role("tab", name="Studies").click()
    page.locator("#study-choice input").click()
    page.get_by_role("option", name=f"#{study} tab study", exact=False).click()
    desk = page.locator("#study-desk")
    expect(desk).to_contain_text(link.split("/study/")[1][:40], timeout=30_000)
    expect(desk).to_contain_text("1 of 1")  # rater 1: rated of target
    text = desk.inner_text()
    assert re.search(r"\d s\b", text) and text.count("never") == 1  # rater 1's median time per vote; rater 2 unseen
    page.locator("#study-revoke-name textarea").fill("rater 2")
    page.locator("#study-revoke").click()
    expect(desk).to_contain_text("revoked", timeout=30_000)
    with pytest.raises(Exception, match="revoked"):
        r.predict(study, second.split("rater=")[1], api_name="/next_pair")
    page.get_by_role("tab", name="Results").click()  # one view of every vote: the study is in its menu
    expect(page.locator("#results-summary")).to_contain_text("Live A/B votes", timeout=30_000)
    page.locator("#results-source input").click()
    page.get_by_role("option", name=f"Study #{study} tab study", exact=False).click()
    expect(page.locator("#results-summary")).to_contain_text(f"Study #{study}: tab study", timeout=30_000)
    expect(page.locator("#results-summary")).to_contain_text("1 votes")
    expect(page.locator("#results-table")).to_contain_text("paper")
    expect(page.locator("#results-table")).to_contain_text("unsteered")


def test_private_mode_marks_the_kept_back_tokens_and_the_cloud_got_others_there(new_page):
    """#26: Private on, one message; the panel marks the kept-back tokens in the answer the user
    reads, and at each of their positions the cloud's token ids hold the stand-in instead."""
    from playwright.sync_api import expect

    page = new_page()  # Kenji, picked by the page's load
    page.locator("#private input").check()
    send(page, "What should I cook tonight?", max_new=32)
    wait_done(page)
    kept = page.locator("#privacy .device mark.kept[data-pos]")  # not the legend's mark
    expect(kept.first).to_be_visible(timeout=30_000)
    expect(page.locator("#privacy .cloud")).to_contain_text("Private mode:")
    sent_ids = [int(i) for i in re.findall(r"\d+", page.locator("#privacy .cloud code").first.inner_text())]
    standins = {m.get_attribute("data-pos"): m.get_attribute("data-id")
                for m in page.locator("#privacy .cloud mark.standin[data-pos]").all()}
    marks = kept.all()
    assert marks and len(standins) == len(marks)
    for mark in marks:
        pos, read = mark.get_attribute("data-pos"), int(mark.get_attribute("data-id"))
        assert sent_ids[int(pos)] == int(standins[pos]) != read, (pos, read)  # absent from what the cloud got
    page.screenshot(path=str(ARTIFACTS / "private_mode.png"), full_page=True)


def test_privacy_panel_marks_the_exposed_terms_and_a_sensitive_entry_goes_on_the_deny_list(new_page, app):
    from playwright.sync_api import expect

    from costeer.evaluation.privacy import distinctive_terms, exposure

    page = new_page()
    pick_user(page, KENJI)
    message = "Suggest a plan for my Friday evening."
    send(page, message, max_new=48)
    wait_done(page)
    cloud = page.locator("#privacy .cloud")
    expect(cloud).to_contain_text("guesses", timeout=60_000)  # the attacker: the store holds two users
    expect(cloud).to_contain_text("chosen tokens can carry personal information")
    expect(cloud).to_contain_text("steering adds")
    store = UserStore(app[1])
    shown = " ".join(cloud.locator("pre").all_inner_texts())  # the prompt and the reply, as the cloud got them
    expected = {t.text for t in exposure(distinctive_terms(store.entries(KENJI), [message]), shown).exposed}
    assert expected, shown  # this reply does carry Kenji's personal terms
    listed = {m.lower() for m in cloud.locator("ul.exposed-terms mark.exposed").all_inner_texts()}
    assert listed == expected
    in_text = {re.sub(r"\W+", " ", m.lower()).strip() for m in cloud.locator("pre mark.exposed").all_inner_texts()}
    assert expected <= in_text  # and marked where they stand
    assert cloud.locator("pre mark.exposed").first.get_attribute("title").startswith("from your history: ")
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#privacy").screenshot(path=str(ARTIFACTS / "privacy_panel.png"))

    page.get_by_role("tab", name="History").click()
    rows = store.entries(KENJI)
    row = next(i for i, e in enumerate(rows) if "Nakazakicho" in e["text"])
    expect(cell(page, row, 3)).to_be_visible(timeout=30_000)
    expect(page.locator("#entry-id textarea")).to_have_value("")  # no entry picked yet, so no id (#27)
    for col in (4, 5):  # pinned and sensitive are on screen at 1280 px, no sideways scrolling (#27)
        box = cell(page, 0, col).bounding_box()
        assert box and box["x"] + box["width"] <= 1280, (col, box)
    cell(page, row, 3).click()
    expect(page.locator("#entry-id textarea")).to_have_value(str(rows[row]["id"]))
    page.locator("#entry-sensitive input").check()
    page.locator("#save-entry").click()
    expect(cell(page, row, 5)).to_contain_text("true", timeout=30_000)
    assert store.entry(rows[row]["id"])["sensitive"] == 1
    page.get_by_role("tab", name="Chat").click()
    send(page, "And what about Saturday?")
    expect(cloud).to_contain_text("Deny-list:", timeout=LONG)
    margin = float(re.search(r"max log p − log b = (\S+)\)", cloud.inner_text()).group(1))
    assert margin <= 1e-6 and "guarantee held over everything sent" in cloud.inner_text()

    # speculation with noise on d: drafts get rejected, and the panel shows them as cloud-visible
    # no wait for the attacker's guess: a Send pressed while it runs is held and then run, not dropped
    page.get_by_text("Advanced").click()
    for elem, value in (("speculate", 4), ("sigma", 0.5)):
        box = page.locator(f"#{elem} input[type=number]")
        box.fill(str(value))
        box.press("Enter")
    page.get_by_text("Advanced").click()
    send(page, "And on Sunday?")
    expect(page.locator("#latency .speculation")).to_contain_text("round trips", timeout=LONG)
    rejected = int(re.search(r"(\d+) rejected", page.locator("#latency .speculation").inner_text()).group(1))
    assert rejected > 0
    expect(cloud.locator(".rejected-drafts")).to_contain_text(f"{rejected} drafted token(s)")


def test_a_second_sweep_pressed_during_the_first_runs_after_it(new_page):
    """The explorer's Run pressed while a sweep runs is queued and run with the values then in the
    form, not dropped; the table's headers stay readable at 1280 px (#27)."""
    from playwright.sync_api import expect

    page = new_page()
    pick_user(page, KENJI)
    send(page, "", max_new=8)  # the explorer uses the Chat tab's max new tokens; an empty message runs nothing
    page.get_by_role("tab", name="Parameter explorer").click()
    page.locator("#ex-message textarea").fill("Plan my Friday evening")
    values = page.locator("#ex-values textarea")
    values.fill("2, 4")
    page.locator("#ex-go").click()  # three answers and their checks: seconds of work
    values.fill("1")
    page.locator("#ex-go").click()  # while the first sweep runs
    table = page.locator("#ex-table")
    expect(table).to_contain_text("lam = 1", timeout=LONG)  # the second sweep ran
    header = table.get_by_text("repeated token 4-grams", exact=True).first
    box = header.bounding_box()
    assert box and box["width"] >= 60, box  # not squashed to a letter per line


def test_an_answer_cut_by_the_token_limit_ends_on_a_sentence_with_the_mark(new_page, app):
    """The bubble shows the answer up to its last sentence (or list line) and "(cut at N tokens)";
    the token view still shows every token the cloud received."""
    from gradio_client import Client
    from playwright.sync_api import expect

    from costeer.engine.text import end_on_sentence

    message, n = "Recommend three albums for a rainy Sunday.", 40
    page = new_page()
    pick_user(page, KENJI)
    send(page, message, max_new=n)
    wait_done(page)
    mark = f"(cut at {n} tokens)"
    expect(page.locator("#steered")).to_contain_text(mark)
    raw = page.locator("#tokens .tokens").inner_text()  # every token generated, as the cloud received them
    bubble = " ".join(page.locator("#steered").inner_text().split())
    shown = end_on_sentence(raw, "length", n)
    kept = " ".join(shown.removesuffix(mark).split())
    assert kept and len(kept) < len(" ".join(raw.split()))  # the half sentence at the end is gone
    cut_at = len(shown.removesuffix(mark).rstrip())
    assert kept[-1] in ".!?:\"')]" or raw[cut_at:].lstrip(" \t")[:1] == "\n"  # a sentence or a list line ended
    assert " ".join(shown.split()[-6:]) in bubble  # its last words and the mark (the bubble renders markdown)
    _, api = Client(app[0], verbose=False).predict(KENJI, message, 20, 10, 2, n, api_name="/generate_pair")
    assert api == shown  # the API gives the same answer, cut the same way


def test_browser_time_against_the_engines_for_the_same_request(new_page, app):
    """Reports (does not assert) the browser's time for a 128-token side-by-side answer against
    the same request through /generate_pair, measured one after the other in this run."""
    from gradio_client import Client
    from playwright.sync_api import expect

    message = "Suggest a plan for my Friday evening."
    client = Client(app[0], verbose=False)
    start = time.perf_counter()
    unsteered, steered = client.predict(KENJI, message, 20, 10, 2, 128, api_name="/generate_pair")
    engine_s = time.perf_counter() - start

    page = new_page()
    pick_user(page, KENJI)
    send(page, "", max_new=128)  # sets max new tokens; an empty message is refused, nothing runs
    page.locator("#message textarea").fill(message)
    start = time.perf_counter()
    page.locator("#send").click()
    expect(page.locator("#tokens .tok").first).to_be_attached(timeout=LONG)
    first_token_s = time.perf_counter() - start
    wait_done(page)
    browser_s = time.perf_counter() - start
    panel = page.locator("#latency").inner_text()
    precision = re.search(r"device weights: (fp32|int8|int4)", panel).group(1)  # the app says which path ran
    expect(page.locator("#model-note")).to_contain_text(f"{precision} weights")
    shown = " ".join(page.locator("#tokens .tokens").inner_text().split())  # every token, never cut
    kept = " ".join(steered.split(" (cut at 128 tokens)")[0].split())  # the API ends a cut answer on a sentence
    assert shown.startswith(kept) and (kept == shown or steered.endswith("(cut at 128 tokens)"))  # the same answer
    figures = {"engine_s": round(engine_s, 2), "browser_s": round(browser_s, 2),
               "browser_over_engine": round(browser_s / engine_s, 3),
               "browser_time_to_first_token_s": round(first_token_s, 2), "latency_panel": panel}
    ARTIFACTS.mkdir(exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "chat.png"))  # the README's screenshot comes from here
    (ARTIFACTS / "browser_speed.json").write_text(json.dumps(figures, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"\nbrowser {browser_s:.1f} s vs engine {engine_s:.1f} s: {browser_s / engine_s:.2f}x; "
          f"first token in the browser after {first_token_s:.2f} s")

