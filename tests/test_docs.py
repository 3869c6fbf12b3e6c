"""The README and docs/ keep up with the code: commands, options, endpoints, the two opening
commands; the README stays short and every page it links exists."""
import re

from conftest import ROOT, docs_text

README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = docs_text()  # the README and every page of docs/


def test_readme_opens_with_exactly_two_commands():
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) == 2
    assert "python app.py" in lines[0] and "scripts/install.sh" in lines[0]
    assert "python -m pytest" in lines[1] and "--test" in lines[1]
    assert "python -m pytest" in (ROOT / ".ci" / "run").read_text()


def test_every_cli_command_and_option_is_documented():
    from costeer.__main__ import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        assert f"python -m costeer {name}" in DOCS, name
        for action in p._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help":
                    assert opt in DOCS, f"{name} {opt}"


def test_store_cli_and_app_api_are_documented():
    from user_store.__main__ import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in sub.choices:
        assert re.search(rf"python -m user_store .*\b{name}\b", DOCS), name
    for endpoint in ("/generate_pair", "/add_history", "/history", "/ratings_summary", "/create_user", "/load_persona",
                     "/create_study", "/study_status", "/cancel_study", "/add_raters", "/leaderboard", "/next_pair",
                     "/vote", "/chat", "/edit_history", "/delete_history", "/results", "/raters", "/revoke_rater", "/skip", "/consent"):
        assert f"`{endpoint}`" in DOCS


def test_app_options_are_documented():
    import app

    for opt in ("--host", "--port", "--db", "--cloud-model", "--local-model", "--auth", "--cloud-url",
                "--insecure-no-auth", "--allow-downloads", "--top-k", "--raters-host", "--raters-port", "--raters-url"):
        assert opt in DOCS and opt in (ROOT / "app.py").read_text()
    assert app.parse_args([]).host == "127.0.0.1"


def test_the_readme_is_short_and_its_links_resolve():
    """A newcomer reads the README in minutes; the rest is one page per topic in docs/, each linked."""
    assert len(README.splitlines()) <= 250
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert pages and all(f"(docs/{name})" in README for name in pages), pages
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
