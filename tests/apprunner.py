"""Start `python app.py` as a real server on a free port, wait until it answers, always stop it."""
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
def running_app(db_path, *extra_args, timeout=180):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = open(f"{db_path}.app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--db", str(db_path), *extra_args],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app exited with {proc.returncode}: {open(log.name).read()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("app did not answer in time")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
