"""The README keeps up with the code: commands, options, endpoints, the two opening commands."""
import re

from conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


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
        assert f"python -m costeer {name}" in README, name
        for action in p._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help":
                    assert opt in README, f"{name} {opt}"


def test_store_cli_and_app_api_are_documented():
    from user_store.__main__ import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in sub.choices:
        assert re.search(rf"python -m user_store .*\b{name}\b", README), name
    for endpoint in ("/generate_pair", "/add_history", "/history", "/ratings_summary", "/create_user", "/load_persona",
                     "/create_study", "/study_status", "/cancel_study", "/add_raters", "/leaderboard", "/next_pair",
                     "/vote"):
        assert f"`{endpoint}`" in README


def test_app_options_are_documented():
    import app

    for opt in ("--host", "--port", "--db", "--cloud-model", "--local-model", "--auth", "--cloud-url",
                "--insecure-no-auth", "--allow-downloads", "--top-k"):
        assert opt in README and opt in (ROOT / "app.py").read_text()
    assert app.parse_args([]).host == "127.0.0.1"
