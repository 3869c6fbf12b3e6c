"""Start a project server (`app.py`, `serve-cloud`) as a real process on a free port, wait until it
answers, and always stop it."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

from conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_process(args: list[str], probe_url: str, log_path, timeout: float = 180):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{args[0]} exited with {proc.returncode}: {open(log_path).read()[-2000:]}")
            try:
                with urllib.request.urlopen(probe_url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"{args[0]} did not answer in {timeout} s")
            time.sleep(0.3)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextmanager
def running_app(db_path, *extra_args, timeout=180):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with running_process(["app.py", "--port", str(port), "--db", str(db_path), *extra_args], url,
                         f"{db_path}.app.log", timeout):
        yield url
