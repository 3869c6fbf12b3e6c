"""Start a project server (`app.py`, `serve-cloud`) as a real process on a free port, wait until it
answers, and always stop it."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_command(cmd: list[str], probe_url: str, log_path, timeout: float = 180, env: dict | None = None):
    """Start `cmd` in its own process group, wait until `probe_url` answers 200, always stop the
    whole group (servers such as vLLM start workers of their own)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: {open(log_path).read()[-3000:]}")
            try:
                with urllib.request.urlopen(probe_url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"{cmd[0]} did not answer in {timeout} s: {open(log_path).read()[-3000:]}")
            time.sleep(0.3)
        yield proc
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


@contextmanager
def running_process(args: list[str], probe_url: str, log_path, timeout: float = 180):
    """A project command (`python -m costeer ...`, `app.py`) as a real process."""
    with running_command([sys.executable, *args], probe_url, log_path, timeout, {"PYTHONPATH": str(ROOT)}) as proc:
        yield proc


@contextmanager
def running_app(db_path, *extra_args, timeout=180):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with running_process(["app.py", "--port", str(port), "--db", str(db_path), *extra_args], url,
                         f"{db_path}.app.log", timeout):
        yield url
