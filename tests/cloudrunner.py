"""Start `python -m costeer serve-cloud` as a separate process on a free port; always stop it."""
import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

from apprunner import free_port
from conftest import ROOT


@contextmanager
def running_cloud(audit_log=None, *extra, timeout=180):
    port = free_port()
    args = [sys.executable, "-m", "costeer", "serve-cloud", "--port", str(port), *extra]
    if audit_log:
        args += ["--audit-log", str(audit_log)]
    log = open(f"{audit_log or '/tmp/costeer-cloud'}.server.log", "w")
    proc = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"cloud exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("cloud did not answer in time")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
