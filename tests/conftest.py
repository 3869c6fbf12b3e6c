"""Shared fixtures: the real bundled model, loaded once per test session."""
import os
import sys
from pathlib import Path

# Before anything imports huggingface_hub: the suite never reaches a hub (pytest-socket
# also blocks every socket but loopback; see pytest.ini).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def lm():
    from costeer.models.load import load_model

    return load_model()


@pytest.fixture(scope="session")
def engine(lm):
    from costeer.engine.decoding import CoSteerEngine

    return CoSteerEngine.one_model(lm)


def docs_text() -> str:
    """The README and every page of docs/, as one text: what the doc tests search."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(p.read_text(encoding="utf-8") for p in pages)


def run_main(args):
    """A project CLI called in this process: `main(argv)` with its output captured and its exit
    code kept, as run_cli reports them. For argument errors, which end before any model loads;
    the child-process runs (run_cli) stay for what a user's shell would see end to end."""
    import contextlib
    import io
    from types import SimpleNamespace

    import app
    import costeer.__main__
    import user_store.__main__

    mains = {("-m", "costeer"): costeer.__main__.main, ("-m", "user_store"): user_store.__main__.main,
             ("app.py",): app.main}
    key = tuple(args[:1]) if args[0] == "app.py" else tuple(args[:2])
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            mains[key](list(args[len(key):]))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def run_cli(args, env=None, **kw):
    """Run a project CLI in a child process, as a user would."""
    import subprocess

    env = dict(env if env is not None else os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600, **kw)
