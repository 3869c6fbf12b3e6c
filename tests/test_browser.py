"""The app in headless Chromium (Debian's package) as a person uses it: persona, chat, vote."""
import shutil
from pathlib import Path

import pytest

from apprunner import running_app
from conftest import ROOT
from user_store import UserStore

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts"
PERSONA = "Kenji (Osaka, vegetarian, jazz)"


@pytest.fixture
def browser_page():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is installed by scripts/install.sh --test"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"])
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 800})
        finally:
            browser.close()


def test_persona_chat_side_by_side_and_vote(tmp_path, browser_page):
    from playwright.sync_api import expect

    page = browser_page
    db = tmp_path / "costeer.db"
    with running_app(db) as url:
        page.goto(url)
        page.locator("#persona input").click()
        page.get_by_role("option", name=PERSONA).click()
        page.locator("#load-persona").click()
        expect(page.locator("#user input")).to_have_value(PERSONA, timeout=30_000)

        expect(page.locator("#side-by-side input")).to_be_checked()
        page.locator("#message textarea").fill("Suggest a plan for my Friday evening.")
        page.locator("#send").click()
        # the privacy panel fills in when the reply is complete
        expect(page.locator("#privacy")).to_contain_text("Sent to the cloud", timeout=180_000)
        expect(page.locator("#privacy")).to_contain_text("Strict vegetarian")  # the context, on the device side
        bubbles = {c: page.locator(f"#{c} .message-row, #{c} [data-testid='bot']") for c in ("steered", "unsteered")}
        texts = {c: page.locator(f"#{c}").inner_text() for c in bubbles}
        for c, t in texts.items():
            answer = t.split("Suggest a plan for my Friday evening.", 1)[1].strip()
            assert answer, f"{c} answer is empty"
        assert texts["steered"] != texts["unsteered"]
        expect(page.locator("#tokens .tok").first).to_be_visible()

        ARTIFACTS.mkdir(exist_ok=True)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(ARTIFACTS / "chat.png"))

        # a second browser session starts clean: no user, no conversation of the first one
        other = page.context.browser.new_page()
        other.goto(url)
        expect(other.locator("#send")).to_be_visible()
        assert other.locator("#user input").input_value() == ""
        assert "Friday" not in other.locator("#steered").inner_text()
        assert "Friday" not in other.locator("#unsteered").inner_text()
        other.close()

        page.get_by_role("tab", name="Rate (blind A/B)").click()
        page.locator("#rater textarea").fill("rita")
        page.locator("#ab-message textarea").fill("What should I cook tonight?")
        page.locator("#ab-generate").click()
        expect(page.locator("#reveal")).to_contain_text("Read both answers", timeout=180_000)
        a = page.locator("#answer-a textarea").input_value()
        b = page.locator("#answer-b textarea").input_value()
        assert a.strip() and b.strip()
        page.locator("#vote-A").click()
        expect(page.locator("#reveal")).to_contain_text("was steered (CoSteer)", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "vote.png"))

    votes = UserStore(db).votes()
    assert len(votes) == 1
    v = votes[0]
    assert v["rater"] == "rita" and v["user"] == PERSONA and v["vote"] == "A"
    assert {v["answer_a"], v["answer_b"]} == {a, b}
    assert v["params"]["T"] == 20 and v["steered_side"] in ("A", "B")
